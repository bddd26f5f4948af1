"""An index of free capacity over the Ready nodes of a workspace, kept exact as usage changes.

:class:`FreeIndex` keeps per-node maxima (in segment trees) and cluster totals of free capacity,
so a task that cannot fit anywhere is refused in O(log nodes), and first fit jumps straight to
the next node whose figures could hold it instead of scanning every GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import COMPUTE_EPSILON, TaskRequest

if TYPE_CHECKING:
    from tessera.scheduler.placement import WorkNode
    from tessera.scheduler.quota import Shape


@dataclass(frozen=True, slots=True)
class Scope:
    """How messages name the nodes looked at: the live Ready ones, or the whole cluster emptied."""

    where: str  # "most free <where>: ..."
    none: str  # "<none> has one"


LIVE = Scope(where="on a Ready node", none="no Ready node")
EMPTY = Scope(where="on any node", none="no node")


class _MaxTree:
    """Maximum of a fixed-size array under point updates; ties go to the lowest index."""

    def __init__(self, values: Sequence[float]) -> None:
        self._n = 1
        while self._n < max(1, len(values)):
            self._n *= 2
        self._tree: list[tuple[float, int]] = [(-math.inf, 0)] * (2 * self._n)
        for i, value in enumerate(values):
            self._tree[self._n + i] = (value, -i)
        for j in range(self._n - 1, 0, -1):
            self._tree[j] = max(self._tree[2 * j], self._tree[2 * j + 1])

    def set(self, i: int, value: float) -> None:
        j = self._n + i
        self._tree[j] = (value, -i)
        j //= 2
        while j:
            a, b = self._tree[2 * j], self._tree[2 * j + 1]
            self._tree[j] = a if a >= b else b
            j //= 2

    def top(self) -> tuple[float, int]:
        """(largest value, lowest index holding it)."""
        value, neg = self._tree[1]
        return value, -neg

    def first_at_least(self, threshold: float, start: int) -> int:
        """The lowest index >= start holding at least ``threshold``; -1 if none."""
        if start >= self._n:
            return -1
        i = self._n + start
        while self._tree[i][0] < threshold:
            while i & 1:  # a right child: climb until the next subtree to the right exists
                i >>= 1
            if i == 0:
                return -1
            i += 1
        while i < self._n:  # descend to the leftmost leaf that qualifies
            i = 2 * i if self._tree[2 * i][0] >= threshold else 2 * i + 1
        return i - self._n


# Per-node figures kept by FreeIndex, in this order. Per GPU, "usable memory" is the largest
# memory-only slice it could take (its compute share goes with it: min(free memory, free compute
# share x size)) and "free share" the largest fraction (min of free memory and compute shares).
_CPU, _MEM, _IDLE, _GPU_MEM, _GPU_PCT, _ALL_MEM, _ALL_PCT, _USABLE, _SHARE = range(9)
_MAXED = (_CPU, _MEM, _IDLE, _GPU_MEM, _GPU_PCT, _USABLE, _SHARE)  # figures with a max tree
_COUNT = 9
_SLACK_MIB = 1e-3  # float rounding in usable memory (compute share x size)


def _figures(node: WorkNode) -> tuple[list[float], int, int]:
    """The node's figures (see above), and the GPUs with the most free memory and compute."""
    idle, best_mem, best_pct, mem_at, pct_at = 0, -1, -1.0, -1, -1
    total_mem, total_pct, usable, share = 0, 0.0, -1.0, -1.0
    for gpu in node.gpus:
        if gpu.mig_mode:
            continue
        idle += gpu.idle
        free_mem = max(0, gpu.memory_mib - gpu.used_memory_mib)
        free_pct = max(0.0, 100.0 - gpu.used_compute_pct)
        total_mem += free_mem
        total_pct += free_pct
        if free_mem > best_mem:
            best_mem, mem_at = free_mem, gpu.index
        if free_pct > best_pct:
            best_pct, pct_at = free_pct, gpu.index
        if gpu.memory_mib > 0:
            usable = max(usable, min(float(free_mem), free_pct / 100 * gpu.memory_mib))
            share = max(share, min(free_mem / gpu.memory_mib, free_pct / 100))
    free = [node.cpu - node.used_cpu, float(node.memory_mib - node.used_memory_mib), float(idle)]
    figures = [*free, float(best_mem), best_pct, float(total_mem), total_pct, usable, share]
    return figures, mem_at, pct_at


class FreeIndex:
    """Exact maxima and totals of free capacity over the Ready nodes, refreshed as nodes change.

    Every check here is a necessary condition for a fit: a task refused here
    cannot be placed; one accepted may still not fit (models, fragmentation).
    """

    def __init__(self, nodes: list[WorkNode]) -> None:
        self._nodes = nodes
        self.dirty: set[int] = set()
        rows = [_figures(n) for n in nodes]
        self._rows = [r[0] for r in rows]
        self._gpu_at = [(r[1], r[2]) for r in rows]
        self._trees = {k: _MaxTree([r[k] for r in self._rows]) for k in _MAXED}
        self._totals = [math.fsum(r[k] for r in self._rows) for k in range(_COUNT)]

    def _refresh(self) -> None:
        for pos in sorted(self.dirty):
            row, mem_at, pct_at = _figures(self._nodes[pos])
            old = self._rows[pos]
            for k in range(_COUNT):
                self._totals[k] += row[k] - old[k]
            for k in _MAXED:
                if row[k] != old[k]:
                    self._trees[k].set(pos, row[k])
            self._rows[pos] = row
            self._gpu_at[pos] = (mem_at, pct_at)
        self.dirty.clear()

    def most(self, figure: int) -> tuple[float, str, int]:
        """(largest free figure, node holding it, GPU index for the per-GPU figures)."""
        self._refresh()
        value, pos = self._trees[figure].top()
        gpu = self._gpu_at[pos][0 if figure == _GPU_MEM else 1]
        return value, self._nodes[pos].name, gpu

    def next_node(self, res: Resources, start: int) -> int:
        """The first Ready node from ``start`` on whose figures could hold ``res``; -1 if none.

        Exact: a node skipped here cannot hold the task, so first fit lands on the same node.
        """
        kind = res.kind
        also: tuple[int, float] | None = None  # a second figure the row must have
        if kind is GpuKind.WHOLE:
            figure, need = _IDLE, float(res.gpu_count)
        elif kind is GpuKind.FRACTION:
            figure, need = _SHARE, float(res.gpus or 0) - COMPUTE_EPSILON
        elif kind is GpuKind.SLICE and res.gpu_compute is not None:
            figure, need = _GPU_PCT, res.gpu_compute - COMPUTE_EPSILON
            if res.gpu_memory is not None:
                also = (_GPU_MEM, float(res.gpu_memory))
        elif kind is GpuKind.SLICE:
            figure, need = _USABLE, float(res.gpu_memory or 0) - _SLACK_MIB
        else:
            figure, need = _CPU, res.cpu - COMPUTE_EPSILON
        self._refresh()
        tree = self._trees[figure]
        pos = tree.first_at_least(need, start)
        if also is not None:
            other, least = also
            while pos >= 0 and self._rows[pos][other] < least:
                pos = tree.first_at_least(need, pos + 1)
        return pos

    def task_shortage(self, task: TaskRequest, shape: Shape) -> str | None:
        """What no Ready node has enough of for this task alone; None if it might fit."""
        head = f"task {task.label} needs"
        cpu, where, _ = self.most(_CPU)
        if shape.cpu > cpu + COMPUTE_EPSILON:
            free = max(0.0, cpu)
            return f"{head} cpu {shape.cpu:g} on one node; most free {LIVE.where}: cpu {free:g} ({where})"
        memory, where, _ = self.most(_MEM)
        if shape.memory > memory:
            return (
                f"{head} {format_mib(shape.memory)} memory on one node; "
                f"most free {LIVE.where}: {format_mib(max(0, int(memory)))} ({where})"
            )
        if shape.kind is GpuKind.WHOLE:
            idle, where, _ = self.most(_IDLE)
            if shape.gpu_count > idle:
                return (
                    f"{head} {plural(shape.gpu_count, 'idle whole GPU')} on one node; "
                    f"most idle {LIVE.where}: {int(idle)} ({where})"
                )
        elif shape.kind is not GpuKind.NONE:
            at_least = "at least " if shape.varies else ""
            free_pct, where, gpu = self.most(_GPU_PCT)
            if free_pct < 0:  # no Ready node has a GPU outside MIG mode: the scan says so best
                return None
            if shape.compute_lb > free_pct + COMPUTE_EPSILON:
                return (
                    f"{head} {at_least}{pct(shape.compute_lb)} compute on one GPU; "
                    f"most free {LIVE.where}: {pct(max(0.0, free_pct))} ({where}, GPU {gpu})"
                )
            free_mem, where, gpu = self.most(_GPU_MEM)
            if shape.gpu_memory_lb > free_mem:
                return (
                    f"{head} {at_least}{format_mib(shape.gpu_memory_lb)} GPU memory on one GPU; "
                    f"most free {LIVE.where}: {format_mib(max(0, int(free_mem)))} ({where}, GPU {gpu})"
                )
        return None

    def gang_shortage(self, shapes: Sequence[Shape], gang: int) -> str | None:
        """What the Ready nodes together lack for the ``gang`` least demanding tasks; None if enough."""
        if gang <= 1:
            return None
        self._refresh()
        whole = [float(s.gpu_count) if s.kind is GpuKind.WHOLE else 0.0 for s in shapes]
        compute = [s.compute_lb if s.is_share else 0.0 for s in shapes]
        gpu_memory = [float(s.gpu_memory_lb) if s.is_share else 0.0 for s in shapes]
        needs = [
            ("cpu", [s.cpu for s in shapes], _CPU),
            ("memory", [float(s.memory) for s in shapes], _MEM),
            ("idle", whole, _IDLE),
            ("compute", compute, _ALL_PCT),
            ("gpu memory", gpu_memory, _ALL_MEM),
        ]
        slack = COMPUTE_EPSILON * max(1, len(self._nodes))  # float sums kept up to date drift a little
        for what, amounts, total in needs:
            # The gang smallest amounts of each resource: a lower bound on what any gang takes.
            need, have = sum(sorted(amounts)[:gang]), self._totals[total]
            if need > have + slack:
                return (
                    f"gang of {gang} tasks needs {_amount(what, need)} in all; "
                    f"the Ready nodes have {_amount(what, max(0.0, have))} left"
                )
        return None


def _amount(what: str, value: float) -> str:
    if what == "cpu":
        return f"cpu {value:g}"
    if what == "idle":
        return plural(round(value), "idle whole GPU")
    if what == "compute":
        return f"{pct(value)} GPU compute"
    return f"{format_mib(round(value))} {what}"


def pct(value: float) -> str:
    """A compute percentage for messages."""
    return f"{round(value, 1):g}%"


def plural(count: int, word: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
