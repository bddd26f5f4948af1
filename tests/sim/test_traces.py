"""openb trace readers: both pod-list layouts, node lists, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.sim.traces import TraceError, read_nodes, read_pods

FULL_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli," + ",".join(
    ["gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time"]
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_layout_keeps_specs_and_times(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pods.csv",
        FULL_HEADER + "\n"
        "p1,8000,30517,0,0,,BE,Running,100,200,101\n"
        "p0,6000,12288,1,460,T4|G2,LS,Pending,50,900,\n"
        "p2,12000,16384,2,1000,||V100M32,LS,Running,0,10,0\n",
    )
    pods = read_pods(path)
    assert pods.names == ("p1", "p0", "p2")
    assert pods.num_gpu.tolist() == [0, 1, 2]
    assert pods.gpu_milli.tolist() == [0, 460, 1000]
    assert pods.gpu_spec == ("", "T4|G2", "||V100M32")
    assert pods.allowed_models(1) == ("T4", "G2")
    assert pods.allowed_models(2) == ("V100M32",)
    assert pods.creation_time.tolist() == [100, 50, 0]
    assert pods.deletion_time.tolist() == [200, 900, 10]
    assert pods.scheduled_time.tolist() == [101, -1, 0]  # empty time kept as -1
    assert pods.qos == ("BE", "LS", "LS") and pods.pod_phase[1] == "Pending"
    assert pods.has_times
    assert pods.total_gpu_milli() == 460 + 2000


def test_short_layout_of_multigpu_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nq,4000,100,8,1000\n")
    pods = read_pods(path)
    assert pods.num_gpu.tolist() == [8]
    assert pods.gpu_spec == ("",) and pods.allowed_models(0) == ()
    assert pods.creation_time.tolist() == [-1]
    assert not pods.has_times


def test_node_list(tmp_path: Path) -> None:
    text = "sn,cpu_milli,memory_mib,gpu,model\nb,64000,262144,2,P100\na,32000,1000,0,\n"
    path = write(tmp_path, "nodes.csv", text)
    nodes = read_nodes(path)
    assert nodes.names == ("b", "a")
    assert nodes.gpus.tolist() == [2, 0]
    assert nodes.models == ("P100", "")
    assert len(nodes) == 2


POD_OK = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nok,1000,10,1,500\n"


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("name,cpu_milli,memory_mib,num_gpu\np,1,1,0\n", 1, "gpu_milli", "missing"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,colour\np,1,1,0,0,red\n", 1, "colour", "unknown"),
        (POD_OK + "bad,12.5,10,0,0\n", 3, "cpu_milli", "not an integer"),
        (POD_OK + "bad,x,10,0,0\n", 3, "cpu_milli", "not an integer"),
        (POD_OK + "bad,1000,-5,0,0\n", 3, "memory_mib", "negative"),
        (POD_OK + "bad,1000,10,-1,0\n", 3, "num_gpu", "negative"),
        (POD_OK + "bad,1000,10,2,500\n", 3, "gpu_milli", "whole GPUs"),
        (POD_OK + "bad,1000,10,1,1500\n", 3, "gpu_milli", "out of 0..1000"),
        (POD_OK + "bad,1000,10,1,0\n", 3, "gpu_milli", "0 milli-GPU"),
        (FULL_HEADER + "\nbad,1,1,0,0,,BE,Running,soon,2,3\n", 2, "creation_time", "not an integer"),
    ],
)
def test_bad_pod_lists_name_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: str, words: str
) -> None:
    path = write(tmp_path, "pods.csv", text)
    with pytest.raises(TraceError) as err:
        read_pods(path)
    message = str(err.value)
    assert str(path) in message
    assert f":{line}" in message
    assert repr(column) in message
    assert words in message
    assert (err.value.line, err.value.column) == (line, column)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("sn,cpu_milli,memory_mib,gpu\nn,1,1,1\n", 1, "model"),
        ("sn,cpu_milli,memory_mib,gpu,model,rack\nn,1,1,1,T4,r1\n", 1, "rack"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn,1,1,1,T4\nm,1,1,two,T4\n", 3, "gpu"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn,-1,1,1,T4\n", 2, "cpu_milli"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn,1,1,2,\n", 2, "model"),
    ],
)
def test_bad_node_lists(tmp_path: Path, text: str, line: int, column: str) -> None:
    path = write(tmp_path, "nodes.csv", text)
    with pytest.raises(TraceError, match=rf"{path.name}:{line}, column '{column}'"):
        read_nodes(path)


def test_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "pods.csv", POD_OK + "short,1,2\n")
    with pytest.raises(TraceError, match=r"pods.csv:3: 3 fields"):
        read_pods(path)
