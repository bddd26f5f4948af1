"""The elastic runtime's pieces that need no Ray cluster: entry points, the events file, storage,
the launch contract of an elastic job, and what the cluster could hold."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera.api.cluster import NodeInventory
from tessera.api.jobs import ElasticSpec, Job
from tessera.api.resources import Resources
from tessera.jobs.elastic import entry, events
from tessera.jobs.launch import launches_for
from tessera.scheduler.feasibility import cluster_holds

ROOT = Path(__file__).resolve().parents[2]


def test_a_module_entry_and_a_script_entry_load() -> None:
    fn = entry.load("tessera.jobs.elastic.entry:split")
    assert fn("pkg.mod:go") == ("pkg.mod", "go")  # type: ignore[arg-type]
    train = entry.load("examples/elastic_train.py", ROOT)
    assert train.__name__ == "train"
    other = entry.load("examples/elastic_train.py:_agreed", ROOT)
    assert other.__name__ == "_agreed"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("no_such_module_here:train", "cannot import module 'no_such_module_here'"),
        ("tessera.jobs.elastic.entry:nope", "has no function 'nope'"),
        ("missing/train.py", "does not exist"),
    ],
)
def test_entries_that_cannot_load_say_why(value: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(entry.EntryError, match=words):
        entry.load(value, tmp_path)


@pytest.mark.parametrize("value", ["", "a b", "pkg.mod:", "pkg..mod:train", "pkg.mod:not-ident", ":train"])
def test_malformed_entries_are_refused_by_the_spec(value: str) -> None:
    with pytest.raises(ValueError, match="package.module:function"):
        ElasticSpec(min_workers=1, max_workers=2, entry=value)


def test_events_are_read_once_and_resume_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / events.FILE
    events.append(path, "running", workers=2)
    events.append(path, "report", workers=2, step=9, metrics={"loss": 0.5}, checkpoint=True)
    with path.open("a") as f:
        f.write('{"event": "failed", "at": 1, "source": "worker"')  # a line still being written
    found, offset = events.pending(tmp_path)
    assert [(e.event, e.workers) for e in found] == [("running", 2)]  # reports are not forwarded
    events.commit(tmp_path, offset)
    assert events.pending(tmp_path)[0] == []
    with path.open("a") as f:
        f.write(', "error": "boom"}\n')
    found, offset = events.pending(tmp_path)  # as after an agent restart: the offset was kept
    assert [(e.event, e.source, e.error) for e in found] == [("failed", "worker", "boom")]
    reports = [e for e in events.read(path)[0] if e.event == "report"]
    assert reports[0].step == 9 and reports[0].checkpoint and reports[0].metrics == {"loss": 0.5}


def test_a_bad_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / events.FILE).write_text('not json\n{"event": "running", "at": 2, "workers": 1}\n')
    assert [e.workers for e in events.pending(tmp_path)[0]] == [1]


def test_storage_is_a_local_dir_or_any_fsspec_url(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from tessera.jobs.elastic.driver import storage

    path, fs = storage(str(tmp_path / "ckpt"))
    assert path == str(tmp_path / "ckpt") and fs is None and Path(path).is_dir()
    path, fs = storage("memory://bucket/run")
    assert path.endswith("bucket/run") and type(fs).__name__ == "PyFileSystem"


def _elastic_job() -> Job:
    now = datetime.now(UTC).isoformat()
    tasks = [
        {"id": str(uuid.uuid4()), "group": "worker", "index": i, "state": "PENDING", "node": f"n{i}"}
        for i in range(3)
    ]
    allocations = [
        {"id": str(uuid.uuid4()), "job_id": str(uuid.UUID(int=1)), "task_id": t["id"], "node": t["node"]}
        for t in tasks[:2]
    ]
    spec = {
        "name": "el",
        "kind": "elastic",
        "groups": [
            {
                "name": "worker",
                "replicas": 3,
                "min_available": 1,
                "command": ["python", "-m", "tessera.jobs.elastic"],
                "resources": {"cpu": 2, "memory": "3Gi"},
            }
        ],
        "elastic": {"min_workers": 1, "max_workers": 3, "entry": "pkg.mod:train", "storage": "/ckpt"},
    }
    return Job.model_validate(
        {
            "id": str(uuid.UUID(int=1)),
            "version": 1,
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "name": "el",
            "project": "default",
            "queue": "default",
            "owner": "u",
            "spec": spec,
            "status": {
                "state": "RUNNING",
                "submitted_at": now,
                "master": {"node": "n0", "address": "10.0.0.5", "port": 29555, "token": "tok-123"},
            },
            "tasks": tasks,
            "allocations": allocations,
        }
    )


def test_the_launch_contract_of_an_elastic_job_names_its_head() -> None:
    job = _elastic_job()
    head = launches_for(job, "n0")[0].env
    worker = launches_for(job, "n1")[0].env
    assert launches_for(job, "n2") == []  # not granted: nothing runs there
    assert head["TESSERA_ELASTIC_ROLE"] == "head" and worker["TESSERA_ELASTIC_ROLE"] == "worker"
    assert head["TESSERA_RAY_ADDRESS"] == worker["TESSERA_RAY_ADDRESS"] == "10.0.0.5:29555"
    assert head["RAY_AUTH_TOKEN"] == worker["RAY_AUTH_TOKEN"] == "tok-123"  # the attempt's cluster token
    assert ElasticSpec.model_validate_json(worker["TESSERA_ELASTIC"]).storage == "/ckpt"
    assert worker["TESSERA_TASK_CPUS"] == "2" and worker["TESSERA_TASK_MEMORY_MIB"] == "3072"
    assert json.loads(head["TESSERA_ELASTIC"])["entry"] == "pkg.mod:train"
    assert "TESSERA_ELASTIC" not in os.environ  # nothing leaked into this process


def test_how_many_tasks_the_emptied_cluster_holds() -> None:
    gpu = {"uuid": "G", "index": 0, "model": "A100-80GB", "memory_mib": 81920}
    nodes = [
        NodeInventory.model_validate(
            {"gpus": [{**gpu, "uuid": f"G{n}{i}", "index": i} for i in range(2)], "cpu": 8, "memory": "64Gi"}
        )
        for n in range(2)
    ]
    assert cluster_holds(Resources(gpus=1), nodes) == 4
    assert cluster_holds(Resources(gpus=2), nodes) == 2
    assert cluster_holds(Resources(gpus=0.5), nodes) == 8
    assert cluster_holds(Resources(gpu_memory=20 * 1024), nodes) == 16
    assert cluster_holds(Resources(gpus=1, cpu=6), nodes) == 2  # the CPUs run out first
    assert cluster_holds(Resources(cpu=2), nodes) == 8
