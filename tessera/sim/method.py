"""The FGD paper's experiment method: arrival order with "tuning" to 130% of cluster milli-GPU, and
the "typical pods" (expected pod mix) that FGD scores against.

Order (seeded): sort the pods by name, shuffle them; then, if the list asks for less than
``ratio x capacity`` milli-GPU, sample pods of the name-sorted list uniformly with replacement and
append them at the end until the next one would pass ``ratio x capacity``; if it asks for more,
remove pods chosen uniformly at random until it no longer passes. All randomness comes from one
``numpy.random.default_rng(seed)``: shuffle first, then sampling (drawn in chunks; the stream is
fixed per seed) or removal (a random removal order, i.e. a permutation).

Typical pods: the trace's own pod list (before tuning) grouped by shape (CPU, milli-GPU per GPU, GPU
count, allowed models), CPU-only pods included; most frequent first (ties: the larger shape first),
taken until they cover ``coverage`` (95%) of the pods; frequencies are renormalised over those
taken (FGD keeps the counts and divides by the covered total).
"""

from __future__ import annotations

import numpy as np

from tessera.scheduler.policies import ClusterState, PodRequest, TypicalPod
from tessera.scheduler.policies.fgd import TYPICAL_COVERAGE, typical_mix
from tessera.sim.traces import IntArray, NodeTable, PodTable

TUNE_RATIO = 1.3
COVERAGE = TYPICAL_COVERAGE
SAMPLE_CHUNK = 1024


def cluster(nodes: NodeTable) -> ClusterState:
    """A fresh, empty cluster of the node list (nodes sorted by name)."""
    return ClusterState.build(nodes.names, nodes.cpu_milli, nodes.memory_mib, nodes.gpus, nodes.models)


def requests(pods: PodTable) -> list[PodRequest]:
    """One request per pod of the table (same order)."""
    return [
        PodRequest(
            cpu_milli=int(pods.cpu_milli[i]),
            memory_mib=int(pods.memory_mib[i]),
            num_gpu=int(pods.num_gpu[i]),
            gpu_milli=int(pods.gpu_milli[i]),
            models=pods.allowed_models(i),
        )
        for i in range(len(pods))
    ]


def arrival_order(pods: PodTable, capacity_milli: int, seed: int, ratio: float = TUNE_RATIO) -> IntArray:
    """Indices into ``pods`` (repeats allowed) in arrival order: name order, shuffled with ``seed``,
    then tuned to ``ratio x capacity_milli`` total milli-GPU as described in the module doc."""
    rng = np.random.default_rng(seed)
    by_name = np.array(sorted(range(len(pods)), key=lambda i: pods.names[i]), dtype=np.int64)
    order = by_name.copy()
    rng.shuffle(order)
    demand = pods.num_gpu * pods.gpu_milli
    target = ratio * capacity_milli
    total = int(demand.sum())
    if total < target:
        extra: list[IntArray] = []
        while True:
            draws = by_name[rng.integers(len(pods), size=SAMPLE_CHUNK)]
            running = total + np.cumsum(demand[draws])
            over = np.flatnonzero(running > target)
            if len(over):
                extra.append(draws[: over[0]])
                break
            extra.append(draws)
            total = int(running[-1])
        order = np.concatenate([order, *extra])
    elif total > target:
        removal = rng.permutation(len(order))
        remaining = total - np.cumsum(demand[order[removal]])
        cut = int(np.flatnonzero(remaining <= target)[0]) + 1
        keep = np.ones(len(order), dtype=np.bool_)
        keep[removal[:cut]] = False
        order = order[keep]
    return order


def typical_pods(pods: PodTable, coverage: float = COVERAGE) -> list[TypicalPod]:
    """The expected pod mix FGD uses (see the module doc); counts are raw pod counts."""
    specs = []
    for i in range(len(pods)):
        gpus = int(pods.num_gpu[i])
        milli = int(pods.gpu_milli[i]) if gpus else 0
        specs.append(((int(pods.cpu_milli[i]), milli, gpus, pods.allowed_models(i)), int(pods.memory_mib[i])))
    return typical_mix(specs, coverage)
