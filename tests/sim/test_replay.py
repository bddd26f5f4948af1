"""Replays: the paper's (pods never leave) on a tiny synthetic trace, with departures, and one
small smoke run on a real openb trace."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tessera.scheduler.policies import ClusterState, policy
from tessera.sim import read_nodes, read_pods, replay, replay_with_departures, requests, run
from tessera.sim.traces import NodeTable, PodTable

REPO = Path(__file__).resolve().parents[2]
OPENB = Path(os.environ.get("TESSERA_OPENB_DIR", REPO.parent / "shared" / "traces" / "openb"))


def tiny(tmp_path: Path) -> tuple[NodeTable, PodTable]:
    (tmp_path / "nodes.csv").write_text(
        "sn,cpu_milli,memory_mib,gpu,model\nb,16000,64000,2,T4\na,8000,32000,1,T4\n"
    )  # 3 GPUs = 3000 milli-GPU
    (tmp_path / "pods.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
        "p0,2000,1000,1,600\n"
        "p1,2000,1000,1,600\n"
        "p2,2000,1000,2,1000\n"
        "p3,1000,1000,0,0\n"
        "p4,2000,1000,1,500\n"
    )  # 3700 milli-GPU asked
    return read_nodes(tmp_path / "nodes.csv"), read_pods(tmp_path / "pods.csv")


def test_replay_in_given_order(tmp_path: Path) -> None:
    nodes, pods = tiny(tmp_path)
    state = ClusterState.build(nodes.names, nodes.cpu_milli, nodes.memory_mib, nodes.gpus, nodes.models)
    result = replay(state, policy("bestfit"), requests(pods), np.array([0, 1, 2, 3, 4]))
    # bestfit: p0 -> a (1 GPU node), p1 -> b GPU 0, p2 (2 whole GPUs) fits nowhere, p3 CPU-only,
    # p4 (500) -> b GPU 1
    assert result.failed.tolist() == [False, False, True, False, False]
    assert result.arrived_milli.tolist() == [600, 1200, 3200, 3200, 3700]
    assert result.used_milli.tolist() == [600, 1200, 1200, 1200, 1700]
    assert result.failed_pods == 1 and result.pods == 5
    assert result.end_ratio == pytest.approx(100 * 1700 / 3000)
    curve = result.curve()
    assert curve[20] == 20.0  # the pod that brought arrived demand to 20% left 20% allocated
    assert curve[40] == 40.0
    assert curve[123] == pytest.approx(56.67)
    assert 130 not in curve  # arrived demand never got near 130%
    assert result.final_ratio == pytest.approx(56.67)
    assert state.allocated_milli == 1700


def test_run_tunes_to_130_percent_and_is_deterministic(tmp_path: Path) -> None:
    nodes, pods = tiny(tmp_path)
    a = run(nodes, pods, "fgd", seed=42)
    b = run(nodes, pods, "fgd", seed=42)
    assert a.arrived_milli.tolist() == b.arrived_milli.tolist()
    assert a.used_milli.tolist() == b.used_milli.tolist()
    assert a.arrived_milli[-1] <= 1.3 * 3000
    assert a.used_milli[-1] <= 3000
    name_order = run(nodes, pods, "bestfit", seed=42, tie_order="name")
    assert name_order.pods == a.pods
    with pytest.raises(ValueError):
        run(nodes, pods, "bestfit", seed=42, tie_order="sideways")


def test_replay_with_departures_queues_fifo(tmp_path: Path) -> None:
    (tmp_path / "nodes.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nn,8000,8000,1,T4\n")
    (tmp_path / "pods.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,"
        "scheduled_time\n"
        "a,1000,100,1,1000,,LS,Running,0,10,0\n"  # runs 0-10
        "b,1000,100,1,1000,,LS,Running,5,8,5\n"  # runs 3 s, waits for a: 10-13
        "c,1000,100,1,500,,LS,Running,6,7,6\n"  # runs 1 s, waits for b: 13-14
        "d,1000,100,0,0,,LS,Running,6,9,6\n"  # CPU-only: starts at once
        "e,9000,100,0,0,,LS,Running,7,8,7\n"  # never fits (9 CPU on an 8 CPU node)
    )
    nodes, pods = read_nodes(tmp_path / "nodes.csv"), read_pods(tmp_path / "pods.csv")
    state = ClusterState.build(nodes.names, nodes.cpu_milli, nodes.memory_mib, nodes.gpus, nodes.models)
    result = replay_with_departures(state, policy("bestfit"), pods)
    assert result.wait.tolist() == [0.0, 5.0, 7.0, 0.0]  # pods a, b, c, d
    assert result.jct.tolist() == [10.0, 8.0, 8.0, 3.0]
    assert result.never_placed == 1 and result.max_queue == 3
    summary = result.summary()
    assert summary["wait_mean"] == 3.0 and summary["wait_p50"] == 2.5
    assert summary["jct_mean"] == pytest.approx(29 / 4)
    assert state.allocated_milli == 0  # everything that ran has left


def test_departures_need_times(tmp_path: Path) -> None:
    nodes, pods = tiny(tmp_path)
    state = ClusterState.build(nodes.names, nodes.cpu_milli, nodes.memory_mib, nodes.gpus, nodes.models)
    with pytest.raises(ValueError, match="creation_time"):
        replay_with_departures(state, policy("bestfit"), pods)


@pytest.mark.skipif(not (OPENB / "openb_pod_list_gpushare40.csv").exists(), reason="openb traces not here")
def test_smoke_real_trace_random_policy() -> None:
    nodes = read_nodes(OPENB / "openb_node_list_gpu_node.csv")
    pods = read_pods(OPENB / "openb_pod_list_gpushare40.csv")
    assert len(nodes) == 1213 and int(nodes.gpus.sum()) == 6212
    result = run(nodes, pods, "random", seed=42)
    assert result.arrived_milli[-1] <= 1.3 * 6_212_000
    assert 84.0 < result.final_ratio < 88.0  # published Random mean: 86.00
    assert result.seconds < 10
