"""The baseline policies of the FGD paper's simulator, plus ``spread``, each vectorised over all nodes.

Scores are computed for every node at once and the best feasible node wins, ties going to the lowest
tie rank (by default the lowest node index, i.e. the lowest node name). The integer arithmetic of the
paper's scorers is kept where it creates ties (BestFit, DotProd and Clustering truncate to integers
in 0..100; Packing has a handful of levels), because the tie rule then decides.
"""

from __future__ import annotations

import numpy as np

from tessera.scheduler.policies.base import MAX_SPEC_CPU, MAX_SPEC_GPU, Policy, fullest_fit_free
from tessera.scheduler.policies.state import MILLI, BoolArray, ClusterState, FloatArray, IntArray, PodRequest


def spec_cpu(state: ClusterState) -> int:
    """CPU normaliser: the largest node's CPU (128,000 milli on openb, the paper's constant)."""
    return int(state.cpu_cap.max()) if state.num_nodes else MAX_SPEC_CPU


def spec_gpu(state: ClusterState) -> int:
    """GPU normaliser: the largest node's milli-GPU (8,000 on openb, the paper's constant)."""
    return int(state.gpu_count.max()) * MILLI if state.num_nodes else MAX_SPEC_GPU


class RandomPolicy(Policy):
    """A uniformly random feasible node; a fractional pod gets a uniformly random GPU that fits."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        nodes = np.flatnonzero(feasible)
        return int(nodes[self.rng.integers(len(nodes))])

    def choose_gpus(self, state: ClusterState, pod: PodRequest, node: int) -> tuple[int, ...]:
        if pod.fractional:
            fitting = np.flatnonzero(state.gpu_free[node] >= pod.gpu_milli)
            return (int(fitting[self.rng.integers(len(fitting))]),)
        return super().choose_gpus(state, pod, node)


def leftover(state: ClusterState, pod: PodRequest) -> FloatArray:
    """Per node: 0.5 * CPU left after the pod / max CPU + 0.5 * GPU left / max GPU (0..1)."""
    cpu = ((state.cpu_free - pod.cpu_milli) / spec_cpu(state)) * 0.5
    gpu = ((state.gpu_free_total - pod.gpu_total) / spec_gpu(state)) * 0.5
    return cpu + gpu


class BestFitPolicy(Policy):
    """Least leftover after placement: ``int(100 * (1 - leftover))``, highest wins."""

    name = "bestfit"

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        scores = np.trunc((1.0 - leftover(state, pod)) * 100)
        return _pick(state, scores, feasible)


class SpreadPolicy(Policy):
    """Least-loaded node first: the most leftover after placement (float, no truncation)."""

    name = "spread"

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        return _pick(state, leftover(state, pod), feasible)


class PackingPolicy(Policy):
    """GPU packing, three levels (higher wins).

    1. the pod fits on already-shared GPUs: ``100 - (free share of the GPU used, in %) // 10``, >= 50;
    2. the node is partly used but the pod needs fully free GPUs: ``50 - GPUs used``, >= 33;
    3. the node is fully free: ``33 - its GPUs`` (at least its GPU count).
    CPU-only pods score 0 everywhere (so the lowest feasible node wins).
    """

    name = "packing"

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        if pod.num_gpu == 0:
            return _pick(state, np.zeros(state.num_nodes), feasible)
        fully_free = (state.gpu_free == MILLI).sum(axis=1)
        idle_node = np.maximum(33 - fully_free, fully_free)
        if pod.fractional:
            best = fullest_fit_free(state.gpu_free, pod.gpu_milli)
            shared = np.maximum(100 - (best * 100 // MILLI) // 10, 50)
            used_node = np.where(best == MILLI, max(50 - 1, 33), shared)
        else:
            used_node = np.full(state.num_nodes, max(50 - pod.num_gpu, 33))
        scores = np.where(fully_free == state.gpu_count, idle_node, used_node)
        return _pick(state, scores, feasible)


class ClusteringPolicy(Policy):
    """Put pods with the same GPU request together (GPU-request classes: a share, or k whole GPUs).

    ``25 * (max GPU - node's free GPU) // max GPU`` plus 75 if the node hosts only this class, 50 if
    it hosts this class among others, 25 if it hosts no GPU pod, 0 otherwise. CPU-only pods score 0.
    """

    name = "clustering"

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        if pod.num_gpu == 0:
            return _pick(state, np.zeros(state.num_nodes), feasible)
        counts = state.affinity
        classes = (counts > 0).sum(axis=1)
        same = counts[:, pod.affinity] > 0
        bonus = np.where(same, np.where(classes == 1, 75, 50), np.where(classes == 0, 25, 0))
        top = spec_gpu(state)
        base = 25 * (top - state.gpu_free_total) // top
        return _pick(state, base + bonus, feasible)


class DotProdPolicy(Policy):
    """Tetris-style dot product of the node's free (CPU, GPU) with the request, both normalised by
    the largest node: ``int(100 * (1 - dot / 2))``, so the smallest product (tightest node) wins."""

    name = "dotprod"

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        cpu, gpu = spec_cpu(state), spec_gpu(state)
        dot = (state.cpu_free / cpu) * (pod.cpu_milli / cpu) + (state.gpu_free_total / gpu) * (
            pod.gpu_total / gpu
        )
        scores = np.trunc(100 * (1 - dot / 2))
        return _pick(state, scores, feasible)


def _pick(state: ClusterState, scores: FloatArray | IntArray, feasible: BoolArray) -> int:
    node = state.pick(scores, feasible)
    assert node is not None  # choose_node is only called with a feasible node
    return node


__all__ = [
    "BestFitPolicy",
    "ClusteringPolicy",
    "DotProdPolicy",
    "PackingPolicy",
    "RandomPolicy",
    "SpreadPolicy",
    "leftover",
]
