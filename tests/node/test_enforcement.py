"""The agent's side of enforcement: which slices may be duty-cycled, the SliceOOM marker, the report."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera.api.jobs import SERVICE_LABEL, Job
from tessera.api.usage import NodeEvent
from tessera.gpushare.enforce import EnforcerConfig
from tessera.jobs.launch import launches_for
from tessera.node import shim
from tessera.node.enforcement import NodeEnforcement, node_ended
from tessera.node.procs import proc_start_time


def make_job(name: str, tasks: int = 1, labels: dict[str, str] | None = None) -> Job:
    job_id, now = uuid.uuid4(), datetime.now(UTC).isoformat()
    task_ids = [uuid.uuid4() for _ in range(tasks)]
    doc: dict[str, Any] = {
        "id": job_id,
        "version": 1,
        "revision": 1,
        "created_at": now,
        "updated_at": now,
        "name": name,
        "project": "default",
        "queue": "default",
        "owner": "me",
        "spec": {"name": name, "groups": [{"command": ["x"], "replicas": tasks}], "labels": labels or {}},
        "status": {"state": "RUNNING", "submitted_at": now},
        "tasks": [
            {"id": t, "group": "worker", "index": i, "state": "RUNNING", "node": "n1"}
            for i, t in enumerate(task_ids)
        ],
        "allocations": [
            {
                "id": uuid.uuid4(),
                "job_id": job_id,
                "task_id": t,
                "node": "n1",
                "gpu_uuid": "GPU-0",
                "memory_mib": 1024,
                "compute_pct": 10,
                "enforcement": {"memory": "report", "compute": "throttle"},
            }
            for t in task_ids
        ],
    }
    return Job.model_validate(doc)


def started(jobs_dir: Path, job: Job) -> None:
    """Task state files as a shim writes them, naming this (live) process as shim and task."""
    me, start = os.getpid(), proc_start_time(os.getpid())
    assert start is not None
    for launch in launches_for(job, "n1"):
        task_dir = jobs_dir / str(job.id) / launch.key
        task_dir.mkdir(parents=True)
        shim.write_state(task_dir, shim.ShimState(me, start, pid=me, pid_start_time=start, started_at=1.0))


def test_gangs_and_service_replicas_are_never_duty_cycled(tmp_path: Path) -> None:
    solo, gang = make_job("solo"), make_job("gang", tasks=2)
    service, waiting = make_job("svc", labels={SERVICE_LABEL: "web"}), make_job("waiting")
    jobs = {j.id: j for j in (solo, gang, service, waiting)}
    for job in (solo, gang, service):
        started(tmp_path, job)
    events: list[NodeEvent] = []
    node = NodeEnforcement("n1", None, tmp_path, EnforcerConfig(), events.append)
    launches = [launch for job in jobs.values() for launch in launches_for(job, "n1")]
    node.set_slices(launches, jobs, tmp_path)
    specs = {context.job.name: spec for spec, context in node.slices()}
    assert len(node.slices()) == 4 and sorted(specs) == ["gang", "solo", "svc"]
    assert specs["solo"].may_throttle and specs["solo"].compute_policy == "throttle"
    assert not specs["gang"].may_throttle and not specs["svc"].may_throttle
    assert "waiting" not in specs  # no state yet: not started, nothing to enforce
    node.enforcer.poll([spec for spec, _ in node.slices()])
    usage = node.usage()
    assert usage.device == "none" and usage.gpus == []
    by_job = {s.job: s for s in usage.slices}
    assert by_job["solo"].compute_tier == "throttle" and by_job["gang"].compute_tier == "measure"
    assert by_job["solo"].policy.memory == "report" and by_job["solo"].tier == "watchdog"


def test_a_task_the_node_stopped_is_marked_for_its_report(tmp_path: Path) -> None:
    job = make_job("greedy")
    started(tmp_path, job)
    events: list[NodeEvent] = []
    node = NodeEnforcement("n1", None, tmp_path, EnforcerConfig(), events.append)
    node.set_slices(launches_for(job, "n1"), {job.id: job}, tmp_path)
    ((spec, context),) = node.slices()
    assert node_ended(context.task_dir) is None
    node.mark_stopped(spec, "used 2048 MiB of its 1024 MiB slice on GPU-0")
    ended = node_ended(context.task_dir)
    assert ended is not None and ended["reason"] == "SliceOOM" and "2048 MiB" in ended["message"]
