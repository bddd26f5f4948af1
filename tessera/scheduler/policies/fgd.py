"""FGD (Fragmentation Gradient Descent, USENIX ATC'23): place a pod where it adds least fragmentation.

A node's fragmentation is the GPU capacity that the expected mix of pods ("typical pods", from the
trace itself: see ``tessera.sim.method.typical_pods``) could not use: the sum over typical pods of
``frequency x amount``, where the amount is all the node's free milli-GPU for a CPU-only spec or for
a spec the node cannot host (model not allowed, too few GPUs with enough free milli-GPU, or too
little free CPU), and, for a spec it can host, the free milli-GPU of the GPUs whose free share is
below that spec's per-GPU need. A placement scores ``int(100 * sigmoid((before - after) / 1000))``;
a fractional pod tries every GPU of the node that fits and keeps the best (first on ties); a
whole-GPU pod takes the node's first fully free GPUs.

Computed here exactly, in integers: with counts instead of frequencies, ``frag x covered`` is
``total * covered - sum_j W_j * (total - part_j)`` where ``j`` runs over the distinct per-GPU needs
of GPU specs, ``part_j`` is the free milli-GPU on GPUs with less than need ``j`` free, and ``W_j``
is the number of typical pods of need ``j`` the node can host, read from a table indexed by (need,
GPU model, CPU level, GPUs fitting the need). A node's score for a pod shape depends only on that
node, so scores are cached per shape and recomputed only for nodes changed since (``version``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tessera.scheduler.policies.base import Policy
from tessera.scheduler.policies.state import (
    MILLI,
    BoolArray,
    ClusterState,
    FloatArray,
    IntArray,
    PodRequest,
)


@dataclass(frozen=True)
class TypicalPod:
    """One pod shape of the expected mix, how many pods of the trace have it, and their mean memory
    (FGD ignores memory; ``tessera`` uses it for its stranding term)."""

    cpu_milli: int
    gpu_milli: int
    num_gpu: int
    models: tuple[str, ...]
    count: int
    memory_mib: float = 0.0


TYPICAL_COVERAGE = 0.95
Spec = tuple[int, int, int, tuple[str, ...]]  # (milli-CPU, milli-GPU per GPU, GPUs, allowed models)


def typical_mix(specs: Iterable[tuple[Spec, int]], coverage: float = TYPICAL_COVERAGE) -> list[TypicalPod]:
    """FGD's "typical pods": the shapes of ``specs`` ((shape, host memory MiB) per pod), most frequent
    first (ties: the larger shape first), taken until they cover ``coverage`` of the pods; counts are
    raw pod counts and memory the mean of the shape's pods."""
    counts: Counter[Spec] = Counter()
    memory: Counter[Spec] = Counter()
    for spec, mem in specs:
        counts[spec] += 1
        memory[spec] += mem
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0][0], kv[0][1], kv[0][2], "|".join(kv[0][3])))
    ranked.reverse()
    needed = coverage * sum(counts.values())
    taken: list[TypicalPod] = []
    covered = 0
    for spec, count in ranked:
        if covered >= needed:
            break
        taken.append(TypicalPod(*spec, count, memory[spec] / count))
        covered += count
    return taken


class FragModel:
    """Fragmentation (times the covered pod count, exact in int64) of node states."""

    def __init__(self, typical: Sequence[TypicalPod], model_names: Sequence[str], max_gpus: int) -> None:
        if not typical:
            raise ValueError("FGD needs at least one typical pod")
        gpu_specs = [t for t in typical if t.gpu_milli > 0]
        self.covered = int(sum(t.count for t in typical))
        self.needs = np.array(sorted({t.gpu_milli for t in gpu_specs}), dtype=np.int64)
        self.cpu_levels = np.array(sorted({t.cpu_milli for t in gpu_specs}), dtype=np.int64)
        self.max_gpus = max_gpus
        shape = (len(self.needs), len(model_names), len(self.cpu_levels) + 1, max_gpus + 1)
        table = np.zeros(shape, dtype=np.int64)
        for t in gpu_specs:
            j = int(np.searchsorted(self.needs, t.gpu_milli))
            b = int(np.searchsorted(self.cpu_levels, t.cpu_milli)) + 1  # hostable from CPU level b on
            for m, name in enumerate(model_names):
                if t.models and name not in t.models:
                    continue
                if t.num_gpu <= max_gpus:
                    table[j, m, b:, t.num_gpu :] += t.count
        self.table = table
        self._j = np.arange(len(self.needs))
        # Per node, the parts and the fragmentation of its current state, by the state's version: a
        # node's "before" is the same for every pod shape, so it is computed once per change.
        self._seen: IntArray | None = None
        self._fit = self._below = np.zeros((0, len(self.needs)), dtype=np.int64)
        self._total = self._before = np.zeros(0, dtype=np.int64)

    def current(self, state: ClusterState, rows: IntArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """(fitting, below, total, frag x covered) of ``rows`` as they are now, cached by version."""
        n = state.num_nodes
        if self._seen is None or len(self._seen) != n:
            self._seen = np.full(n, -1, dtype=np.int64)
            self._fit = np.zeros((n, len(self.needs)), dtype=np.int64)
            self._below = np.zeros((n, len(self.needs)), dtype=np.int64)
            self._total = np.zeros(n, dtype=np.int64)
            self._before = np.zeros(n, dtype=np.int64)
        stale = rows[self._seen[rows] != state.version[rows]]
        if len(stale):
            fitting, below, total = self.parts(state.gpu_free[stale])
            self._fit[stale], self._below[stale], self._total[stale] = fitting, below, total
            self._before[stale] = self.frag(
                state.cpu_free[stale], fitting, below, total, state.model_code[stale]
            )
            self._seen[stale] = state.version[stale]
        return self._fit[rows], self._below[rows], self._total[rows], self._before[rows]

    def parts(self, free: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        """(GPUs fitting each need, free milli on GPUs below each need, total free) per node."""
        f = free[..., None]
        fitting = (f >= self.needs).sum(axis=-2)
        below = self.waste(f).sum(axis=-2)
        return fitting, below, np.clip(free, 0, None).sum(axis=-1)

    def waste(self, f: IntArray) -> IntArray:
        """Free milli-GPU ``f`` (..., 1) that a pod of each need (J) cannot use: all of it if it
        is below the need, else none (absent GPUs, -1, count as 0)."""
        return np.where((f >= 0) & (f < self.needs), f, 0)

    def frag(
        self, cpu: IntArray, fitting: IntArray, below: IntArray, total: IntArray, model: IntArray
    ) -> IntArray:
        """``frag x covered`` for states given by broadcastable arrays (``fitting``/``below``: ..., J)."""
        level = np.searchsorted(self.cpu_levels, cpu, side="right")
        hosted = self.table[self._j, model[..., None], level[..., None], np.clip(fitting, 0, self.max_gpus)]
        total = np.asarray(total, dtype=np.int64)
        return total * self.covered - (hosted * (total[..., None] - below)).sum(axis=-1)

    def node_frag(self, state: ClusterState, rows: IntArray) -> IntArray:
        fitting, below, total = self.parts(state.gpu_free[rows])
        return self.frag(state.cpu_free[rows], fitting, below, total, state.model_code[rows])

    def deltas(self, state: ClusterState, rows: IntArray, pod: PodRequest) -> tuple[FloatArray, BoolArray]:
        """``(before - after) x covered`` of placing ``pod`` on each of ``rows``: shape (R, G) for a
        fractional pod (one column per GPU), (R, 1) otherwise; and which entries are possible."""
        free = state.gpu_free[rows]
        cpu, model = state.cpu_free[rows], state.model_code[rows]
        fitting, below, total, before = self.current(state, rows)
        cpu_after = cpu - pod.cpu_milli
        if pod.fractional:
            m = pod.gpu_milli
            now, after = free[..., None], free[..., None] - m
            needs = self.needs
            fit2 = fitting[:, None, :] + (after >= needs).astype(np.int64) - (now >= needs)
            below2 = below[:, None, :] + self.waste(after) - self.waste(now)
            # frag broadcasts: per-node figures as (R, 1) columns against the (R, G) candidates
            frag2 = self.frag(cpu_after[:, None], fit2, below2, (total - m)[:, None], model[:, None])
            return (before[:, None] - frag2).astype(np.float64), free >= m
        if pod.num_gpu:
            k = pod.num_gpu
            ok = (free == MILLI).sum(axis=1) >= k
            frag2 = self.frag(cpu_after, fitting - k, below, total - k * MILLI, model)
        else:
            ok = np.ones(len(rows), dtype=np.bool_)
            frag2 = self.frag(cpu_after, fitting, below, total, model)
        return (before - frag2).astype(np.float64)[:, None], ok[:, None]


@dataclass
class _Entry:
    score: FloatArray
    gpu: IntArray
    version: IntArray


ShapeKey = tuple[object, ...]


class FgdPolicy(Policy):
    """FGD as in the paper's simulator (integer scores, lowest node on ties)."""

    name = "fgd"

    def __init__(self, typical: Sequence[TypicalPod]) -> None:
        self.typical = tuple(typical)
        self._state: ClusterState | None = None
        self._model: FragModel | None = None
        self._cache: dict[ShapeKey, _Entry] = {}

    def frag_model(self, state: ClusterState) -> FragModel:
        if self._state is not state or self._model is None:
            self._state = state
            self._model = FragModel(self.typical, state.model_names, state.max_gpus)
            self._cache = {}
        return self._model

    def score(self, delta: FloatArray, model: FragModel) -> FloatArray:
        """FGD's score of a placement from its fragmentation decrease (x covered)."""
        x = delta / model.covered / 1000
        return np.trunc(1.0 / (1.0 + np.exp(-x)) * 100)

    def gpu_scores(
        self, state: ClusterState, rows: IntArray, pod: PodRequest, delta: FloatArray, ok: BoolArray
    ) -> FloatArray:
        """Per (row, candidate GPU) score; the best per row wins (first on ties). -inf: impossible."""
        model = self._model
        assert model is not None
        return np.where(ok, self.score(delta, model), -np.inf)

    def adjust(self, state: ClusterState, pod: PodRequest, scores: FloatArray) -> FloatArray:
        """Hook: final node scores from the cached per-node scores (FGD: unchanged)."""
        return scores

    def shape_key(self, pod: PodRequest) -> ShapeKey:
        """Pods with equal keys score equally on every node (memory does not enter FGD)."""
        return (pod.cpu_milli, pod.gpu_milli, pod.num_gpu, pod.models if pod.num_gpu else ())

    def node_scores(self, state: ClusterState, pod: PodRequest) -> tuple[FloatArray, IntArray]:
        """Score of every node for ``pod`` (-inf where it cannot go) and, for a fractional pod, the
        GPU it would take there (refreshing only nodes changed since the last call for this shape)."""
        model = self.frag_model(state)
        key = self.shape_key(pod)
        entry = self._cache.get(key)
        if entry is None:
            n = state.num_nodes
            entry = _Entry(
                np.full(n, -np.inf), np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
            )
            self._cache[key] = entry
        stale = np.flatnonzero(entry.version != state.version)
        if len(stale):
            delta, ok = model.deltas(state, stale, pod)
            scores = self.gpu_scores(state, stale, pod, delta, ok)
            rows = np.arange(len(stale))
            best = np.argmax(scores, axis=1)
            entry.score[stale] = scores[rows, best]
            entry.gpu[stale] = best
            entry.version[stale] = state.version[stale]
        return entry.score, entry.gpu

    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        scores, _ = self.node_scores(state, pod)
        node = state.pick(self.adjust(state, pod, scores), feasible & (scores > -np.inf))
        assert node is not None  # a feasible node has a GPU that fits, hence a finite score
        return node

    def choose_gpus(self, state: ClusterState, pod: PodRequest, node: int) -> tuple[int, ...]:
        """A fractional pod takes the node's best-scoring GPU; others as every policy does."""
        if pod.fractional:
            _, gpus = self.node_scores(state, pod)
            return (int(gpus[node]),)
        return super().choose_gpus(state, pod, node)


def frag_of(state: ClusterState, typical: Sequence[TypicalPod]) -> NDArray[np.float64]:
    """Fragmentation (milli-GPU) of every node of ``state`` under the typical mix (for reports)."""
    model = FragModel(typical, state.model_names, state.max_gpus)
    rows = np.arange(state.num_nodes)
    return model.node_frag(state, rows) / model.covered
