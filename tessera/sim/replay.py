"""Replays of openb pod lists against a placement policy.

``replay`` is the FGD paper's experiment: pods arrive one by one in the method's order (see
``tessera.sim.method``) and never leave; a pod that fits nowhere counts as failed and the replay goes
on. After each pod it records the arrived demand and the allocated milli-GPU. ``curve`` turns that
into the allocation ratio per percent of arrived demand the way the paper's analysis script does
(the mean over pods whose arrived demand rounds to that percent, or to a neighbour if none), and the
headline ``final_ratio`` is that value at 130% arrived demand.

``replay_with_departures`` replays by time instead: a pod arrives at its ``creation_time`` and runs
for ``deletion_time - creation_time`` once placed; a pod that fits nowhere waits in a FIFO queue and
is retried (in queue order, each one that fits starting) whenever capacity is freed. It reports wait
time and job completion time (JCT = wait + run time).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.scheduler.policies import ClusterState, Placement, PodRequest, Policy, policy
from tessera.scheduler.policies.state import BoolArray
from tessera.sim.method import arrival_order, cluster, requests, typical_pods
from tessera.sim.traces import IntArray, NodeTable, PodTable

HEADLINE_PERCENT = 130


@dataclass
class ReplayResult:
    """Per-pod record of one replay (arrays indexed by arrival position)."""

    policy: str
    capacity_milli: int
    arrived_milli: IntArray
    used_milli: IntArray
    failed: BoolArray
    seconds: float = 0.0

    @property
    def pods(self) -> int:
        return len(self.arrived_milli)

    @property
    def failed_pods(self) -> int:
        return int(self.failed.sum())

    @property
    def end_ratio(self) -> float:
        """Allocated / capacity (%) after the last pod."""
        return 100.0 * int(self.used_milli[-1]) / self.capacity_milli if self.pods else 0.0

    def curve(self, last: int = HEADLINE_PERCENT) -> dict[int, float]:
        """Allocation ratio (%) at each whole percent 0..last of arrived demand, as the paper's
        ``merge_alloc_discrete`` computes it (percents with no pod within one point are left out)."""
        arrive = np.round(100.0 * self.arrived_milli / self.capacity_milli)
        alloc = np.round(100.0 * self.used_milli / self.capacity_milli, 2)
        out: dict[int, float] = {}
        for percent in range(last + 1):
            hit = arrive == percent
            if not hit.any():
                hit = (arrive >= percent - 1) & (arrive <= percent + 1)
                if not hit.any():
                    continue
            out[percent] = round(float(alloc[hit].mean()), 2)
        return out

    @property
    def final_ratio(self) -> float:
        """The headline: allocation ratio (%) at 130% arrived demand (end ratio if never reached)."""
        return self.curve().get(HEADLINE_PERCENT, round(self.end_ratio, 2))


def replay(state: ClusterState, chooser: Policy, pods: list[PodRequest], order: IntArray) -> ReplayResult:
    """Place ``pods[i]`` for each ``i`` of ``order`` in turn on ``state`` (mutated), never removing."""
    start = time.perf_counter()
    n = len(order)
    arrived = np.zeros(n, dtype=np.int64)
    used = np.zeros(n, dtype=np.int64)
    failed = np.zeros(n, dtype=np.bool_)
    total_arrived = 0
    total_used = state.allocated_milli
    for pos, index in enumerate(order.tolist()):
        pod = pods[index]
        total_arrived += pod.gpu_total
        placement = chooser.select(state, pod)
        if placement is None:
            failed[pos] = True
        else:
            chooser.apply(state, pod, placement)
            total_used += pod.gpu_total
        arrived[pos] = total_arrived
        used[pos] = total_used
    return ReplayResult(
        policy=chooser.name,
        capacity_milli=state.capacity_milli,
        arrived_milli=arrived,
        used_milli=used,
        failed=failed,
        seconds=time.perf_counter() - start,
    )


def run(
    nodes: NodeTable, pods: PodTable, policy_name: str, seed: int, *, tie_order: str = "shuffled"
) -> ReplayResult:
    """One (trace, policy, seed) run of the paper's method on a fresh cluster.

    ``tie_order`` decides which of equally scored nodes wins. ``"shuffled"`` (default): the lowest
    rank in a permutation of the nodes seeded by ``seed``. This is what the paper's Go simulator
    does: it breaks ties by the lowest node name, but first prefixes each node's name with its index
    in a seeded random permutation (``fmt.Sprintf("%04d-", rand.Perm(n)[i])``), so the published
    table was produced with a random-per-seed, fixed node order. ``"name"``: the lowest node index
    in plain name order (Packing and Clustering then land about a point lower on openb)."""
    start = time.perf_counter()
    state = cluster(nodes)
    if tie_order == "shuffled":
        state.set_tie_order(np.random.default_rng([seed, 1]).permutation(state.num_nodes))
    elif tie_order != "name":
        raise ValueError(f"unknown tie order {tie_order!r} (name, shuffled)")
    order = arrival_order(pods, state.capacity_milli, seed)
    typical = typical_pods(pods) if policy_name in ("fgd", "tessera") else []
    chooser = policy(policy_name, seed=seed + 1_000_003, typical=typical)
    result = replay(state, chooser, requests(pods), order)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class DepartureResult:
    """Outcome of a replay with departures (times in the trace's unit, seconds)."""

    policy: str
    pods: int
    wait: np.ndarray[Any, np.dtype[np.float64]]
    jct: np.ndarray[Any, np.dtype[np.float64]]
    never_placed: int
    max_queue: int
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        def stats(prefix: str, xs: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
            if not len(xs):
                return {f"{prefix}_mean": 0.0, f"{prefix}_p50": 0.0, f"{prefix}_p99": 0.0}
            return {
                f"{prefix}_mean": float(xs.mean()),
                f"{prefix}_p50": float(np.percentile(xs, 50)),
                f"{prefix}_p99": float(np.percentile(xs, 99)),
            }

        return {
            "pods": float(self.pods),
            "placed": float(len(self.wait)),
            "never_placed": float(self.never_placed),
            "waited": float((self.wait > 0).sum()),
            "max_queue": float(self.max_queue),
            **stats("wait", self.wait),
            **stats("jct", self.jct),
        }


def replay_with_departures(
    state: ClusterState,
    chooser: Policy,
    table: PodTable,
    pods: list[PodRequest] | None = None,
    speedup: float = 1.0,
) -> DepartureResult:
    """Replay ``table`` by creation/deletion time on ``state`` (mutated); see the module doc.

    ``speedup`` > 1 compresses the arrivals (creation times divided by it) while each pod keeps its
    run time: the same work arrives faster, so the cluster fills and pods queue."""
    if not table.has_times:
        raise ValueError("this pod list has no creation_time/deletion_time columns")
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    start = time.perf_counter()
    pods = pods if pods is not None else requests(table)
    runtime = np.maximum(table.deletion_time - table.creation_time, 0)
    created = np.floor(table.creation_time / speedup).astype(np.int64)
    arrivals = sorted(range(len(table)), key=lambda i: (int(created[i]), table.names[i]))
    events: list[tuple[int, int, int]] = []  # (time, 0 = departure / 1 = arrival, pod)
    for i in arrivals:
        heapq.heappush(events, (int(created[i]), 1, i))
    queue: list[int] = []
    started: dict[int, int] = {}
    placements: dict[int, Placement] = {}
    max_queue = 0

    def start_pod(i: int, now: int) -> bool:
        placement = chooser.select(state, pods[i])
        if placement is None:
            return False
        chooser.apply(state, pods[i], placement)
        placements[i], started[i] = placement, now
        heapq.heappush(events, (now + int(runtime[i]), 0, i))
        return True

    while events:
        now, kind, i = heapq.heappop(events)
        if kind == 1:
            if not start_pod(i, now):
                queue.append(i)
                max_queue = max(max_queue, len(queue))
            continue
        freed = {placements[i].node}
        chooser.release(state, pods[i], placements.pop(i))
        while events and events[0][0] == now and events[0][1] == 0:
            _, _, j = heapq.heappop(events)
            freed.add(placements[j].node)
            chooser.release(state, pods[j], placements.pop(j))
        if queue:
            queue = _retry(state, chooser, pods, queue, sorted(freed), now, start_pod)
    done = sorted(started)
    wait = np.array([started[i] - created[i] for i in done], dtype=np.float64)
    jct = wait + runtime[done].astype(np.float64)
    return DepartureResult(
        policy=chooser.name,
        pods=len(table),
        wait=wait,
        jct=jct,
        never_placed=len(table) - len(done),
        max_queue=max_queue,
        seconds=time.perf_counter() - start,
    )


def _retry(
    state: ClusterState,
    chooser: Policy,
    pods: list[PodRequest],
    queue: list[int],
    freed: list[int],
    now: int,
    start_pod: Callable[[int, int], bool],
) -> list[int]:
    """Retry the queue in order after capacity was freed on ``freed`` nodes only: a queued pod did
    not fit anywhere before, so it can fit now only on one of those nodes (cheap pre-check)."""
    nodes = np.array(freed, dtype=np.int64)
    waiting: list[int] = []
    for i in queue:
        pod = pods[i]
        fits = (state.cpu_free[nodes] >= pod.cpu_milli) & (state.mem_free[nodes] >= pod.memory_mib)
        if pod.num_gpu:
            fits &= state.model_mask(pod.models)[nodes]
            fits &= (state.gpu_free[nodes] >= pod.gpu_milli).sum(axis=1) >= pod.num_gpu
        if not (fits.any() and start_pod(i, now)):
            waiting.append(i)
    return waiting
