"""Scheduler scale: cycle time and memory of ``TesseraScheduler`` on large synthetic snapshots.

Four cases, each a pure ``TesseraScheduler().cycle(snapshot)`` on a snapshot built directly from the
model dataclasses (no database, no API), timed with ``time.perf_counter`` (best and median of 3 runs;
building the snapshot is not timed):

1. ``full``: 10,000 pending jobs of mixed shapes (whole GPUs, fractions, memory/compute slices) in
   4 queues on a 1,000-node cluster (8x 80Gi GPUs per node) filled by 8,000 running one-GPU jobs:
   nothing fits, every job must get a pending reason. Half the running and half the pending jobs
   declare an expected runtime, so each queue's head gets a reservation (step 5) and the others
   with a runtime try to backfill.
2. ``gang``: one 256-task gang (1 GPU per task) on 1,000 empty 8-GPU nodes: it must be bound.
3. ``preempt``: a priority-200 gang of 32 tasks (1 GPU each) against 5,000 running one-GPU tasks
   (5,000 one-task preemptible priority-50 jobs of the same queue) filling 625 nodes x 8 GPUs:
   evictions must be produced.
4. ``memory``: 5,000 empty nodes / 40,000 GPUs and 25,000 pending jobs x 4 tasks (100,000 tasks) of
   mixed shapes, one cycle; peak RSS (VmHWM) of a fresh subprocess running only this case.

Run: ``.venv/bin/python -m bench.scheduler`` (all cases, one markdown table), or
``.venv/bin/python -m bench.scheduler --case memory`` (the memory case alone, prints JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tessera.api.resources import Resources
from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.model import (
    Decisions,
    GpuState,
    NodeState,
    PendingJob,
    QueueState,
    RunningJob,
    SlicePlacement,
    Snapshot,
    TaskRequest,
)

RUNS = 3
GPU_MEMORY_MIB = 81920
GPUS_PER_NODE = 8
NOW = datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
T0 = NOW - timedelta(hours=1)
QUEUES = ("q0", "q1", "q2", "q3")
_NS = uuid.UUID("6f1c1e0a-0000-4000-8000-00000000beef")

# Mixed job shapes, one Resources object per shape shared by every task of that shape.
SHAPES: tuple[Resources, ...] = (
    Resources(gpus=1, cpu=4, memory=16384),
    Resources(gpus=2, cpu=8, memory=32768),
    Resources(gpus=0.5, cpu=2, memory=8192),
    Resources(gpus=0.25, cpu=1, memory=4096),
    Resources(gpu_memory=20480, cpu=2, memory=8192),
    Resources(gpu_memory=10240, gpu_compute=25, cpu=1, memory=4096),
)
ONE_GPU = Resources(gpus=1, cpu=4, memory=16384)


def _id(kind: str, name: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"{kind}/{name}")


def make_nodes(count: int, full: bool = False, prefix: str = "n") -> list[NodeState]:
    """``count`` Ready nodes of 8x 80Gi GPUs, 128 CPU, 2Ti memory; every GPU fully used if ``full``."""
    nodes: list[NodeState] = []
    for n in range(count):
        name = f"{prefix}{n:05d}"
        gpus = tuple(
            GpuState(
                uuid=f"GPU-{name}-{i}",
                index=i,
                model="H100-80GB",
                memory_mib=GPU_MEMORY_MIB,
                used_memory_mib=GPU_MEMORY_MIB if full else 0,
                used_compute_pct=100.0 if full else 0.0,
            )
            for i in range(GPUS_PER_NODE)
        )
        nodes.append(NodeState(name=name, ready=True, cpu=128.0, memory_mib=2 * 1024 * 1024, gpus=gpus))
    return nodes


def make_job(
    name: str,
    tasks: int,
    res: Resources | Callable[[int], Resources],
    queue: str = "q0",
    priority: int = 100,
    submitted_s: float = 0.0,
    preemptible: bool = False,
) -> PendingJob:
    """A pending job of ``tasks`` tasks of group ``worker`` (``res`` per task, or a function of its index)."""
    return PendingJob(
        job_id=_id("job", name),
        name=name,
        queue=queue,
        priority=priority,
        submitted_at=T0 + timedelta(seconds=submitted_s),
        tasks=tuple(
            TaskRequest(_id("task", f"{name}/{i}"), "worker", i, res(i) if callable(res) else res)
            for i in range(tasks)
        ),
        preemptible=preemptible,
    )


def mixed_jobs(count: int, tasks: int) -> list[PendingJob]:
    """``count`` jobs of ``tasks`` tasks, shapes and queues cycling, priorities and submit times varied."""
    return [
        make_job(
            f"job-{j}",
            tasks,
            SHAPES[j % len(SHAPES)],
            queue=QUEUES[j % len(QUEUES)],
            priority=50 + (j * 7) % 100,
            submitted_s=float(j),
        )
        for j in range(count)
    ]


def queues() -> tuple[QueueState, ...]:
    return tuple(QueueState(name=q) for q in QUEUES)


def full_snapshot() -> Snapshot:
    """1,000 nodes filled by 8,000 running one-GPU jobs (half with an expected runtime); 10,000 pending
    jobs, half with one: every queue's head gets a reservation and the others try to backfill."""
    nodes, running = filled(1000, preemptible=False)
    pending = [
        dataclasses.replace(job, expected_runtime_s=float(600 + (j * 37) % 7200)) if j % 2 else job
        for j, job in enumerate(mixed_jobs(10_000, 1))
    ]
    return Snapshot(
        nodes=tuple(nodes), pending=tuple(pending), now=NOW, running=tuple(running), queues=queues()
    )


def gang_snapshot() -> Snapshot:
    gang = make_job("gang-256", 256, ONE_GPU)
    return Snapshot(nodes=tuple(make_nodes(1000)), pending=(gang,), now=NOW, queues=(QueueState("q0"),))


def filled(count: int, preemptible: bool) -> tuple[list[NodeState], list[RunningJob]]:
    """``count`` nodes x 8 GPUs, each GPU used by a running one-GPU priority-50 job of queue q0.

    Started 1-120 minutes ago; every other one declared an expected runtime (30 min to 4 h).
    """
    nodes: list[NodeState] = []
    running: list[RunningJob] = []
    for node in make_nodes(count):
        gpus = []
        for gpu in node.gpus:
            name = f"run-{node.name}-{gpu.index}"
            tid = _id("task", f"{name}/0")
            placement = SlicePlacement(tid, node.name, gpu.uuid, gpu.index, GPU_MEMORY_MIB, 100.0)
            k = len(running)
            running.append(
                RunningJob(
                    job_id=_id("job", name),
                    name=name,
                    queue="q0",
                    priority=50,
                    preemptible=preemptible,
                    started_at=NOW - timedelta(minutes=1 + k % 120),
                    placements=(placement,),
                    cpu=ONE_GPU.cpu,
                    memory_mib=ONE_GPU.memory,
                    host_usage=((node.name, ONE_GPU.cpu, ONE_GPU.memory),),
                    expected_runtime_s=float(1800 + (k * 53) % 12600) if k % 2 else None,
                )
            )
            gpus.append(GpuState(gpu.uuid, gpu.index, gpu.model, gpu.memory_mib, GPU_MEMORY_MIB, 100.0))
        nodes.append(
            NodeState(
                name=node.name,
                ready=True,
                cpu=node.cpu,
                memory_mib=node.memory_mib,
                gpus=tuple(gpus),
                used_cpu=GPUS_PER_NODE * ONE_GPU.cpu,
                used_memory_mib=GPUS_PER_NODE * ONE_GPU.memory,
            )
        )
    return nodes, running


def preempt_snapshot() -> Snapshot:
    """625 nodes x 8 GPUs fully used by 5,000 preemptible one-GPU jobs; a 32-GPU gang of higher priority."""
    nodes, running = filled(625, preemptible=True)
    gang = make_job("preemptor", 32, ONE_GPU, priority=200)
    return Snapshot(
        nodes=tuple(nodes), pending=(gang,), now=NOW, running=tuple(running), queues=(QueueState("q0"),)
    )


def memory_snapshot() -> Snapshot:
    return Snapshot(
        nodes=tuple(make_nodes(5000)), pending=tuple(mixed_jobs(25_000, 4)), now=NOW, queues=queues()
    )


def time_cycles(snapshot: Snapshot, check: Callable[[Decisions], None]) -> tuple[float, float]:
    """Best and median seconds of RUNS cycles over the same snapshot (each checked)."""
    times = []
    for _ in range(RUNS):
        scheduler = TesseraScheduler()
        start = time.perf_counter()
        decisions = scheduler.cycle(snapshot)
        times.append(time.perf_counter() - start)
        check(decisions)
    return min(times), statistics.median(times)


def check_full(d: Decisions) -> None:
    assert not d.binds, f"{len(d.binds)} jobs bound on a full cluster"
    assert len(d.pending) == 10_000, len(d.pending)
    reserved = sum(1 for r in d.pending.values() if r.code == RESERVED)
    assert reserved == len(QUEUES), f"{reserved} reservations, expected one per queue"


def check_gang(d: Decisions) -> None:
    assert len(d.binds) == 1 and len(d.binds[0].task_nodes()) == 256, d.pending


def check_preempt(d: Decisions) -> None:
    assert d.evictions, d.pending
    assert len(d.evictions) >= 32, len(d.evictions)


def peak_rss_kib() -> int:
    """VmHWM of this process in KiB (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_case() -> dict[str, float]:
    """Build the big snapshot and run one cycle in this process; peak RSS and timings."""
    start = time.perf_counter()
    snap = memory_snapshot()
    built = time.perf_counter() - start
    start = time.perf_counter()
    decisions = TesseraScheduler().cycle(snap)
    cycle_s = time.perf_counter() - start
    assert len(decisions.binds) + len(decisions.pending) == 25_000
    return {
        "peak_rss_kib": peak_rss_kib(),
        "build_s": built,
        "cycle_s": cycle_s,
        "binds": len(decisions.binds),
        "evictions": len(decisions.evictions),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=["all", "memory"], default="all")
    args = parser.parse_args()
    if args.case == "memory":
        print(json.dumps(memory_case()))
        return

    rows: list[tuple[str, str, str, str, bool]] = []
    cases: list[tuple[str, Callable[[], Snapshot], Callable[[Decisions], None], float, str]] = [
        ("10,000 pending on full 1,000-node cluster", full_snapshot, check_full, 1.0, "< 1 s"),
        ("256-task gang on 1,000 empty nodes", gang_snapshot, check_gang, 0.1, "< 100 ms"),
        ("32-task gang preempting among 5,000 running", preempt_snapshot, check_preempt, 0.2, "< 200 ms"),
    ]
    for label, build, check, target_s, target in cases:
        snap = build()
        best, median = time_cycles(snap, check)
        rows.append((label, ms(best), ms(median), target, median < target_s))
        print(f"# {label}: best {ms(best)}, median {ms(median)}", file=sys.stderr)

    proc = subprocess.run(
        [sys.executable, "-m", "bench.scheduler", "--case", "memory"],
        check=True,
        capture_output=True,
        text=True,
    )
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = mem["peak_rss_kib"] / (1024 * 1024)
    rows.append(
        (
            "peak RSS: 5,000 nodes / 40,000 GPUs / 100,000 pending tasks, one cycle "
            f"(cycle {mem['cycle_s']:.1f} s, {int(mem['binds']):,} jobs bound)",
            f"{gib:.2f} GiB",
            "(one run)",
            "< 2 GiB",
            gib < 2.0,
        )
    )

    print("| case | best | median | target | met |")
    print("|------|-----:|-------:|-------:|:---:|")
    for label, best_s, median_s, target, met in rows:
        print(f"| {label} | {best_s} | {median_s} | {target} | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
