"""A numpy cluster state for GPU-sharing placement: free CPU, memory and milli-GPU per node and GPU.

Nodes are kept sorted by name; a node's index in that order is its identity (and, by default, its
rank when scores tie: the lowest index wins, as in the FGD paper's simulator). GPU capacity is in
milli-GPU (1000 = one GPU); ``gpu_free`` is a ``(nodes, max_gpus)`` array holding each GPU's free
milli-GPU, with -1 where a node has fewer GPUs than ``max_gpus``.

A pod takes ``gpu_milli`` of one GPU when it is fractional (``num_gpu == 1``, ``gpu_milli < 1000``),
or ``num_gpu`` whole GPUs of one node; CPU and memory of that node must fit too, and ``models``
(empty: any) restricts the GPU model of a GPU pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

MILLI = 1000

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PodRequest:
    """What one pod asks for. ``models`` are the GPU models it accepts (empty: any)."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if min(self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli) < 0:
            raise ValueError(f"negative request: {self}")
        if self.gpu_milli > MILLI or (self.num_gpu > 1 and self.gpu_milli != MILLI):
            raise ValueError(f"a pod takes 1..1000 milli of one GPU or whole GPUs: {self}")
        if (self.num_gpu == 0) != (self.gpu_milli == 0):
            raise ValueError(f"num_gpu and gpu_milli must both be zero or both positive: {self}")

    @property
    def gpu_total(self) -> int:
        """Milli-GPU the pod takes in all (e.g. 2000 for two whole GPUs)."""
        return self.num_gpu * self.gpu_milli

    @property
    def fractional(self) -> bool:
        return self.num_gpu == 1 and self.gpu_milli < MILLI

    @property
    def affinity(self) -> int:
        """GPU-request class: -1 no GPU, 0 a share of one GPU, k >= 1 k whole GPUs."""
        if self.num_gpu == 0:
            return -1
        return 0 if self.fractional else self.num_gpu


@dataclass(frozen=True)
class Placement:
    """Where a pod goes: a node index and the GPU indices on that node (empty for CPU-only pods)."""

    node: int
    gpus: tuple[int, ...] = ()


@dataclass
class ClusterState:
    """Free resources of every node (sorted by name) and GPU. Mutated by ``allocate``/``release``."""

    names: tuple[str, ...]
    cpu_cap: IntArray
    mem_cap: IntArray
    gpu_count: IntArray
    model_names: tuple[str, ...]
    model_code: IntArray
    cpu_free: IntArray = field(init=False)
    mem_free: IntArray = field(init=False)
    gpu_free: IntArray = field(init=False)
    gpu_free_total: IntArray = field(init=False)
    affinity: NDArray[np.int32] = field(init=False)
    version: IntArray = field(init=False)
    tie_rank: IntArray = field(init=False)
    _clock: int = field(init=False, default=0)
    _masks: dict[tuple[str, ...], BoolArray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.names)
        gmax = int(self.gpu_count.max()) if n else 0
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        present = np.arange(gmax)[None, :] < self.gpu_count[:, None]
        self.gpu_free = np.where(present, MILLI, -1).astype(np.int64)
        self.gpu_free_total = self.gpu_count * MILLI
        self.affinity = np.zeros((n, gmax + 1), dtype=np.int32)
        self.version = np.zeros(n, dtype=np.int64)
        self.tie_rank = np.arange(n, dtype=np.int64)

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        cpu_milli: Sequence[int] | IntArray,
        memory_mib: Sequence[int] | IntArray,
        gpus: Sequence[int] | IntArray,
        models: Sequence[str],
    ) -> ClusterState:
        """A fresh (empty) cluster; nodes are reordered by name."""
        order = sorted(range(len(names)), key=lambda i: names[i])
        model_names = tuple(sorted(set(models)))
        code = {m: i for i, m in enumerate(model_names)}
        return cls(
            names=tuple(names[i] for i in order),
            cpu_cap=np.asarray(cpu_milli, dtype=np.int64)[order],
            mem_cap=np.asarray(memory_mib, dtype=np.int64)[order],
            gpu_count=np.asarray(gpus, dtype=np.int64)[order],
            model_names=model_names,
            model_code=np.array([code[models[i]] for i in order], dtype=np.int64),
        )

    def copy(self) -> ClusterState:
        """An independent copy (same nodes, same usage, same tie order)."""
        out = ClusterState(
            self.names, self.cpu_cap, self.mem_cap, self.gpu_count, self.model_names, self.model_code
        )
        for name in ("cpu_free", "mem_free", "gpu_free", "gpu_free_total", "affinity", "version", "tie_rank"):
            setattr(out, name, getattr(self, name).copy())
        out._clock = self._clock
        return out

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def max_gpus(self) -> int:
        return int(self.gpu_free.shape[1])

    @property
    def capacity_milli(self) -> int:
        return int(self.gpu_count.sum()) * MILLI

    @property
    def allocated_milli(self) -> int:
        return self.capacity_milli - int(self.gpu_free_total.sum())

    def set_tie_order(self, rank: IntArray) -> None:
        """Break score ties by lowest ``rank[node]`` instead of lowest node index."""
        if sorted(rank.tolist()) != list(range(self.num_nodes)):
            raise ValueError("tie order must be a permutation of the node indices")
        self.tie_rank = rank.astype(np.int64)

    def model_mask(self, models: tuple[str, ...]) -> BoolArray:
        """Nodes whose GPU model is one of ``models`` (all nodes when ``models`` is empty)."""
        mask = self._masks.get(models)
        if mask is None:
            if models:
                wanted = np.array([m in models for m in self.model_names], dtype=np.bool_)
                mask = wanted[self.model_code] & (self.gpu_count > 0)
            else:
                mask = np.ones(self.num_nodes, dtype=np.bool_)
            self._masks[models] = mask
        return mask

    def feasible(self, pod: PodRequest) -> BoolArray:
        """Nodes where ``pod`` fits now (CPU, memory, GPU model, enough GPUs with enough free)."""
        ok = (self.cpu_free >= pod.cpu_milli) & (self.mem_free >= pod.memory_mib)
        if pod.num_gpu == 0:
            return ok
        ok &= self.model_mask(pod.models)
        fitting = (self.gpu_free >= pod.gpu_milli).sum(axis=1)
        ok &= fitting >= pod.num_gpu
        return ok

    def pick(self, scores: FloatArray | IntArray, feasible: BoolArray) -> int | None:
        """The feasible node with the highest score; ties go to the lowest tie rank."""
        if not feasible.any():
            return None
        masked = np.where(feasible, scores, -np.inf)
        best = masked.max()
        tied = np.flatnonzero(masked == best)
        if len(tied) == 1:
            return int(tied[0])
        return int(tied[np.argmin(self.tie_rank[tied])])

    def check(self, pod: PodRequest, placement: Placement) -> None:
        """Raise ``ValueError`` unless ``placement`` is valid for ``pod`` now."""
        n, gpus = placement.node, placement.gpus
        if not 0 <= n < self.num_nodes:
            raise ValueError(f"no node {n}")
        if self.cpu_free[n] < pod.cpu_milli or self.mem_free[n] < pod.memory_mib:
            raise ValueError(f"{pod} does not fit node {self.names[n]} (CPU/memory)")
        if len(gpus) != pod.num_gpu or len(set(gpus)) != len(gpus):
            raise ValueError(f"{pod} needs {pod.num_gpu} distinct GPUs, got {gpus}")
        if pod.num_gpu and not self.model_mask(pod.models)[n]:
            raise ValueError(f"node {self.names[n]} has no GPU model in {pod.models}")
        for g in gpus:
            if not 0 <= g < self.gpu_count[n] or self.gpu_free[n, g] < pod.gpu_milli:
                raise ValueError(f"{pod} does not fit GPU {g} of node {self.names[n]}")

    def allocate(self, pod: PodRequest, placement: Placement) -> None:
        """Take ``pod``'s resources at ``placement`` (validated first)."""
        self.check(pod, placement)
        self._change(pod, placement, -1)

    def release(self, pod: PodRequest, placement: Placement) -> None:
        """Give back what ``allocate(pod, placement)`` took."""
        n = placement.node
        if self.cpu_free[n] + pod.cpu_milli > self.cpu_cap[n] or any(
            self.gpu_free[n, g] + pod.gpu_milli > MILLI for g in placement.gpus
        ):
            raise ValueError(f"releasing {pod} from {placement} frees more than the node has")
        self._change(pod, placement, +1)

    def touch(self, node: int) -> None:
        """Note that ``node``'s free figures were set from outside (scores cached for it are stale)."""
        self._clock += 1
        self.version[node] = self._clock

    def _change(self, pod: PodRequest, placement: Placement, sign: int) -> None:
        n = placement.node
        self.cpu_free[n] += sign * pod.cpu_milli
        self.mem_free[n] += sign * pod.memory_mib
        for g in placement.gpus:
            self.gpu_free[n, g] += sign * pod.gpu_milli
        self.gpu_free_total[n] += sign * pod.gpu_total
        if pod.affinity >= 0:
            self.affinity[n, pod.affinity] -= sign
        self._clock += 1
        self.version[n] = self._clock
