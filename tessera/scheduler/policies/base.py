"""The policy interface: filter the nodes, score them all at once, pick, then choose the GPUs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from tessera.scheduler.policies.state import MILLI, BoolArray, ClusterState, IntArray, Placement, PodRequest

# Normalisers of the paper's scorers: the largest node's CPU (milli) and GPU (milli) capacity.
MAX_SPEC_CPU = 128_000
MAX_SPEC_GPU = 8 * MILLI


class Policy(ABC):
    """A placement policy: ``select`` a placement for one pod, ``apply``/``release`` it on the state.

    Subclasses implement ``choose_node`` over the feasible nodes (vectorised over all nodes, ties to
    the lowest tie rank via ``ClusterState.pick``) and may override ``choose_gpus``. The default GPU
    choice: whole-GPU pods take the node's first fully free GPUs; a fractional pod takes the fullest
    GPU that still fits it (lowest index on ties).
    """

    name: ClassVar[str]

    def select(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        feasible = state.feasible(pod)
        if not feasible.any():
            return None
        node = self.choose_node(state, pod, feasible)
        return Placement(node, self.choose_gpus(state, pod, node))

    @abstractmethod
    def choose_node(self, state: ClusterState, pod: PodRequest, feasible: BoolArray) -> int:
        """Index of the chosen node; ``feasible`` has at least one True."""

    def choose_gpus(self, state: ClusterState, pod: PodRequest, node: int) -> tuple[int, ...]:
        if pod.num_gpu == 0:
            return ()
        if pod.fractional:
            return (fullest_fit(state.gpu_free[node], pod.gpu_milli),)
        return whole_gpus(state.gpu_free[node], pod.num_gpu)

    def apply(self, state: ClusterState, pod: PodRequest, placement: Placement) -> None:
        state.allocate(pod, placement)

    def release(self, state: ClusterState, pod: PodRequest, placement: Placement) -> None:
        state.release(pod, placement)

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        """``select`` then ``apply``; None (and no change) when the pod fits nowhere."""
        placement = self.select(state, pod)
        if placement is not None:
            self.apply(state, pod, placement)
        return placement


def fullest_fit(row: IntArray, milli: int) -> int:
    """Index of the GPU with the least free milli-GPU that still has ``milli`` free (lowest on ties)."""
    return int(np.argmin(np.where(row >= milli, row, 2 * MILLI + 1)))


def whole_gpus(row: IntArray, count: int) -> tuple[int, ...]:
    """The first ``count`` fully free GPUs of a node."""
    return tuple(int(g) for g in np.flatnonzero(row == MILLI)[:count])


def fullest_fit_free(gpu_free: IntArray, milli: int) -> IntArray:
    """Per node: free milli-GPU of its fullest GPU that fits ``milli`` (2001 where none fits)."""
    return np.where(gpu_free >= milli, gpu_free, 2 * MILLI + 1).min(axis=1)
