"""`tessera admin check`: the store's invariants, read in one snapshot.

* no GPU is over-committed: per GPU, the memory of every slice counted on it (draining ones too)
  fits its memory and their compute shares sum to at most 100%; a MIG instance holds one slice;
  every slice is on a GPU its node has;
* nothing is orphaned: tasks and slices belong to a job that exists, a live replica's workload exists;
* states agree: only a scheduled or running job holds (non-draining) slices, a running job holds
  some, and no task is at an attempt its job has not reached.
"""

from __future__ import annotations

import uuid
from collections import defaultdict

from sqlalchemy import func, select

from tessera.api.admin import CheckProblem, CheckReport
from tessera.api.cluster import NodeInventory
from tessera.api.jobs import JobState, JobStatus
from tessera.jobs.launch import RUN_STATES
from tessera.platform.store.db import Database
from tessera.platform.store.rows import AllocationRow, JobRow, NodeRow, ReplicaRow, TaskRow

EPSILON = 1e-6
_RUN = {s.value for s in RUN_STATES}
_STATES = {s.value for s in JobState}
_LIVE_REPLICA = {"Pending", "Starting", "Ready", "Terminating"}


def check_store(db: Database) -> CheckReport:
    problems: list[CheckProblem] = []

    def problem(kind: str, obj: str, message: str) -> None:
        problems.append(CheckProblem(kind=kind, object=obj, message=message))

    with db.read() as session:
        jobs = {r.id: r for r in session.execute(select(JobRow)).scalars()}
        nodes = {
            r.name: NodeInventory.model_validate(r.inventory)
            for r in session.execute(select(NodeRow)).scalars()
        }
        tasks = list(session.execute(select(TaskRow)).scalars())
        allocs = list(session.execute(select(AllocationRow)).scalars())
        replicas = list(session.execute(select(ReplicaRow)).scalars())
        job_count = session.execute(select(func.count()).select_from(JobRow)).scalar_one()

    def name(job_id: object) -> str:
        row = jobs.get(job_id)  # type: ignore[call-overload]
        return f"job {row.name} ({row.id})" if row is not None else f"job {job_id}"

    # GPUs ------------------------------------------------------------------------------------
    gpus = {g.uuid: (node, g.memory_mib) for node, inv in nodes.items() for g in inv.gpus}
    mig = {m.uuid for inv in nodes.values() for g in inv.gpus for m in g.mig_instances}
    used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    holders: dict[str, list[str]] = defaultdict(list)
    mig_holders: dict[str, int] = defaultdict(int)
    for a in allocs:
        if a.node not in nodes:
            problem(
                "unknown-node",
                f"slice {a.id} of {name(a.job_id)}",
                f"is on node {a.node!r}, which is not registered",
            )
            continue
        if a.mig_instance:
            mig_holders[a.mig_instance] += 1
            if a.mig_instance not in mig:
                problem(
                    "unknown-gpu",
                    f"slice {a.id} of {name(a.job_id)}",
                    f"is on MIG instance {a.mig_instance}, which node {a.node} does not have",
                )
        if a.gpu_uuid is None:
            continue
        if a.gpu_uuid not in gpus or gpus[a.gpu_uuid][0] != a.node:
            problem(
                "unknown-gpu",
                f"slice {a.id} of {name(a.job_id)}",
                f"is on GPU {a.gpu_uuid}, which node {a.node} does not have",
            )
            continue
        if a.mig_instance:
            continue  # a MIG instance has its own memory; its GPU's share is not summed
        used[a.gpu_uuid][0] += a.memory_mib
        used[a.gpu_uuid][1] += a.compute_pct
        holders[a.gpu_uuid].append(name(a.job_id))
    for gpu, (memory, compute) in used.items():
        node, capacity = gpus[gpu]
        if memory > capacity + EPSILON or compute > 100 + EPSILON:
            problem(
                "overcommit",
                f"gpu {gpu} on node {node}",
                f"holds {memory:g} MiB of {capacity} MiB and {compute:g}% compute, for "
                f"{', '.join(sorted(set(holders[gpu])))}",
            )
    for instance, count in mig_holders.items():
        if count > 1:
            problem("mig-shared", f"MIG instance {instance}", f"holds {count} slices; one at most")

    # orphans ---------------------------------------------------------------------------------
    for t in tasks:
        if t.job_id not in jobs:
            problem("orphan-task", f"task {t.id}", f"belongs to job {t.job_id}, which does not exist")
    task_ids = {t.id for t in tasks}
    for a in allocs:
        if a.job_id not in jobs or a.task_id not in task_ids:
            problem(
                "orphan-allocation",
                f"slice {a.id}",
                f"belongs to job {a.job_id} / task {a.task_id}, which does not exist",
            )
    for r in replicas:
        if r.state in _LIVE_REPLICA and r.job_id is not None and r.job_id not in jobs:
            problem(
                "orphan-replica",
                f"replica {r.id}",
                f"is {r.state} but its workload {r.job_id} does not exist",
            )

    # states ----------------------------------------------------------------------------------
    holding: dict[uuid.UUID, int] = defaultdict(int)
    for a in allocs:
        if not a.releasing:
            holding[a.job_id] += 1
    for job_id, row in jobs.items():
        if row.state not in _STATES:
            problem("bad-state", name(job_id), f"has state {row.state!r}")
            continue
        if holding[job_id] and row.state not in _RUN:
            problem("leaked-slice", name(job_id), f"is {row.state} but holds {holding[job_id]} slice(s)")
        if row.state in _RUN and not holding[job_id]:
            problem("running-without-slices", name(job_id), f"is {row.state} but holds no slice")
    attempts = {job_id: JobStatus.model_validate(row.status).attempt for job_id, row in jobs.items()}
    for t in tasks:
        if t.job_id in attempts and t.attempt > attempts[t.job_id]:
            problem(
                "future-attempt",
                f"task {t.group_name}-{t.index} of {name(t.job_id)}",
                f"is at attempt {t.attempt}, its job at {attempts[t.job_id]}",
            )

    checked = {
        "jobs": job_count,
        "tasks": len(tasks),
        "slices": len(allocs),
        "nodes": len(nodes),
        "gpus": len(gpus),
        "replicas": len(replicas),
    }
    return CheckReport(ok=not problems, checked=checked, problems=problems)
