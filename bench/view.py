"""The scheduling loop's view: what a cycle costs before the scheduler runs, full rebuild vs incremental.

A view of 1,000 nodes (8 GPUs each), 8,000 running one-GPU jobs and 10,000 pending jobs, built
from the API models the change feed carries. Measured, best of 5:

- ``rebuild``: derive every job and node again and assemble the snapshot (what a loop that
  re-reads its state each cycle pays, parsing from the feed aside);
- ``one change``: one running job's new version folded in, then the snapshot (what the loop pays
  per cycle when one thing changed);
- ``100 changes``: a hundred jobs changed between two cycles.

Run: ``.venv/bin/python -m bench.view``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from tessera.api.cluster import Gpu, Node, NodeInventory, NodeState
from tessera.api.jobs import Allocation, Job, JobSpec, JobState, JobStatus, Task, TaskGroupSpec, TaskState
from tessera.api.resources import Resources
from tessera.platform.controllers.view import ClusterView

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NODES, GPUS, PENDING = 1000, 8, 10_000
_NS = uuid.UUID("6f1c3a52-8d5e-4c1b-9a43-5d8f0e2b7c11")


def _id(name: str) -> uuid.UUID:
    return uuid.uuid5(_NS, name)


def make_node(n: int) -> Node:
    name = f"n{n:05d}"
    gpus = [Gpu(uuid=f"GPU-{name}-{i}", index=i, model="H100-80GB", memory_mib=81920) for i in range(GPUS)]
    return Node(
        id=_id(name),
        version=1,
        revision=1,
        created_at=NOW,
        updated_at=NOW,
        name=name,
        state=NodeState.READY,
        inventory=NodeInventory(gpus=gpus, cpu=128, memory=2 * 1024 * 1024),
    )


def make_job(name: str, node: str | None = None, gpu: str | None = None, version: int = 1) -> Job:
    job_id, task_id = _id(name), _id(f"{name}/0")
    resources = Resources(gpus=1, cpu=4, memory=16384)
    spec = JobSpec(name=name, groups=[TaskGroupSpec(command=["train"], resources=resources)])
    placed = node is not None
    status = JobStatus(
        state=JobState.RUNNING if placed else JobState.PENDING,
        submitted_at=NOW,
        started_at=NOW if placed else None,
    )
    task = Task(id=task_id, group="worker", index=0, state=TaskState.RUNNING if placed else TaskState.PENDING)
    allocations = []
    if node is not None:
        task = task.model_copy(update={"node": node})
        allocations = [
            Allocation(
                id=_id(f"{name}/a"),
                job_id=job_id,
                task_id=task_id,
                node=node,
                gpu_uuid=gpu,
                memory_mib=81920,
                compute_pct=100.0,
            )
        ]
    return Job(
        id=job_id,
        version=version,
        revision=version,
        created_at=NOW,
        updated_at=NOW,
        name=name,
        project="default",
        queue="default",
        owner="bench",
        spec=spec,
        status=status,
        tasks=[task],
        allocations=allocations,
    )


def best(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    nodes = [make_node(n) for n in range(NODES)]
    running = [make_job(f"r-{n.name}-{g.index}", n.name, g.uuid) for n in nodes for g in n.inventory.gpus]
    pending = [make_job(f"p-{i}") for i in range(PENDING)]

    def rebuild() -> None:
        view = ClusterView()
        for node in nodes:
            view.nodes[node.name] = node
            view._stale.add(node.name)
        for job in running + pending:
            view.put_job(job)
        view.snapshot(NOW)

    view = ClusterView()
    for node in nodes:
        view.nodes[node.name] = node
        view._stale.add(node.name)
    for job in running + pending:
        view.put_job(job)
    view.snapshot(NOW)
    versions = iter(range(2, 10_000_000))

    def changes(count: int) -> Callable[[], None]:
        def apply() -> None:
            for job in running[:count]:
                view.put_job(job.model_copy(update={"version": next(versions)}))
            view.snapshot(NOW)

        return apply

    rows = [
        ("rebuild: every job and node derived again", best(rebuild, 3)),
        ("one job changed, then the snapshot", best(changes(1))),
        ("100 jobs changed, then the snapshot", best(changes(100))),
    ]
    print(f"| view of {NODES:,} nodes, {len(running):,} running and {PENDING:,} pending jobs | best |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
