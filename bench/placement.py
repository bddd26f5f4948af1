"""Placement throughput with fractional GPU accounting, per policy (issue 5; ANCHORS.md section 2).

Single-slice pods (a share of one GPU: 100-900 milli-GPU, 2 CPUs, 8 GiB) placed one at a time on
an empty synthetic cluster of 8-GPU nodes (96 CPUs, 1 TiB), until ``PODS`` are placed, in two ways:

- ``core``: the policy on the numpy ``ClusterState`` (what ``tessera sim`` replays);
- ``cycle``: the live path, ``Workspace.place_task`` with the policy ranking through the scorer's
  mirror and the exact fit check (what the scheduling cycle does per task).

Pods per second, best of 3 runs. Run: ``.venv/bin/python -m bench.placement [--nodes 1000 5000]``.
"""

from __future__ import annotations

import argparse
import time
import uuid

from tessera.api.resources import Resources
from tessera.scheduler.model import GpuState, NodeState, TaskRequest
from tessera.scheduler.placement import Ranking, Workspace
from tessera.scheduler.policies import POLICIES, ClusterState, PodRequest, TypicalPod, policy
from tessera.scheduler.scoring import Scorer

GPUS, CPU_MILLI, MEMORY_MIB, GPU_MIB = 8, 96_000, 1024 * 1024, 80_000
PODS = 5000
SHARES = (100, 300, 500, 700, 900, 200, 400, 600, 800)
TARGETS = {1000: 5000.0, 5000: 1000.0}  # pods/s (issue 5)


def pods(count: int) -> list[PodRequest]:
    return [PodRequest(2000, 8192, 1, SHARES[i % len(SHARES)]) for i in range(count)]


def typical() -> list[TypicalPod]:
    return [TypicalPod(2000, share, 1, (), 100, 8192.0) for share in SHARES]


def core(nodes: int, name: str) -> float:
    best = 0.0
    for _ in range(3):
        names = [f"n{i:05d}" for i in range(nodes)]
        state = ClusterState.build(
            names, [CPU_MILLI] * nodes, [MEMORY_MIB] * nodes, [GPUS] * nodes, ["A100"] * nodes
        )
        chooser = policy(name, seed=1, typical=typical())
        work = pods(PODS)
        start = time.perf_counter()
        placed = sum(chooser.place(state, pod) is not None for pod in work)
        best = max(best, placed / (time.perf_counter() - start))
    return best


def cycle(nodes: int, name: str) -> float:
    best = 0.0
    states = [
        NodeState(
            name=f"n{i:05d}",
            ready=True,
            cpu=CPU_MILLI / 1000,
            memory_mib=MEMORY_MIB,
            gpus=tuple(GpuState(f"GPU-{i}-{g}", g, "A100", GPU_MIB) for g in range(GPUS)),
        )
        for i in range(nodes)
    ]
    tasks = [
        TaskRequest(uuid.uuid4(), "worker", 0, Resources(gpus=pod.gpu_milli / 1000, cpu=2, memory=8192))
        for pod in pods(PODS)
    ]
    for _ in range(3):
        ws = Workspace(states, empty=False, indexed=True)
        ws.scorer = Scorer(ws.ready_nodes)
        ws.scorer.learn(((2000, share, 1, ()), 8192) for share in SHARES for _ in range(100))
        rank = Ranking(name)
        start = time.perf_counter()
        placed = sum(ws.place_task(task, {}, rank) is not None for task in tasks)
        best = max(best, placed / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    args = parser.parse_args()
    print("| policy | nodes | core pods/s | cycle pods/s | target | met (core / cycle) |")
    print("|---|---:|---:|---:|---:|:---:|")
    for nodes in args.nodes:
        for name in args.policies:
            a, b = core(nodes, name), cycle(nodes, name)
            target = TARGETS.get(nodes, 0.0)
            met = f"{'yes' if a >= target else 'no'} / {'yes' if b >= target else 'no'}"
            print(f"| {name} | {nodes:,} | {a:,.0f} | {b:,.0f} | >= {target:,.0f} | {met} |", flush=True)


if __name__ == "__main__":
    main()
