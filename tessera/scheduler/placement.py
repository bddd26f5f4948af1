"""Placement on a working copy of the cluster: the fit rules every scheduler shares.

Capacity is never over-committed: per GPU, memory and compute each stay within
the device; per node, CPU and memory likewise. Whole GPUs take idle devices
only; fractions and slices share a GPU outside MIG mode. Tasks go to the first
Ready node (by name) and first GPUs (by index) that have room.

:class:`Workspace` holds the usage for one cycle with an undo journal, so a
gang is all-or-nothing and preemption can be simulated and taken back.
:class:`FreeIndex` keeps exact maxima and totals of free capacity as the
workspace changes, so a task that cannot fit anywhere is refused in
O(log nodes) instead of by scanning every GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import COMPUTE_EPSILON, NodeState, SlicePlacement, TaskRequest

if TYPE_CHECKING:
    from tessera.scheduler.quota import Shape

ShapeKey = tuple[object, ...]


def shape_key(res: Resources) -> ShapeKey:
    """A hashable key for what a task asks: equal keys fit exactly the same places."""
    return (
        res.gpus,
        res.gpu_memory,
        res.gpu_compute,
        res.mig_profile,
        tuple(res.gpu_models),
        res.cpu,
        res.memory,
    )


@dataclass(slots=True)
class WorkGpu:
    """Mutable working copy of one GPU's usage for the length of a cycle."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    used_memory_mib: int
    used_compute_pct: float
    mig_mode: bool

    @property
    def idle(self) -> bool:
        """Whether nothing at all is allocated on this GPU."""
        return self.used_memory_mib == 0 and self.used_compute_pct <= COMPUTE_EPSILON

    def holds(self, memory_mib: int, compute_pct: float) -> bool:
        """Whether this much more memory and compute still fit on the GPU."""
        return (
            self.used_memory_mib + memory_mib <= self.memory_mib
            and self.used_compute_pct + compute_pct <= 100.0 + COMPUTE_EPSILON
        )

    def serves(self, resources: Resources) -> bool:
        """Whether a non-MIG request may use this GPU at all (model allow-list, not in MIG mode)."""
        return not self.mig_mode and resources.fits_model(self.model)


@dataclass(slots=True)
class WorkNode:
    """Mutable working copy of one node's host usage and GPUs."""

    name: str
    ready: bool
    cpu: float
    memory_mib: int
    used_cpu: float
    used_memory_mib: int
    gpus: list[WorkGpu]
    pos: int = -1  # index among the Ready nodes; -1 when NotReady

    def holds_host(self, resources: Resources) -> bool:
        """Whether the node has the task's CPU and memory left."""
        return (
            self.used_cpu + resources.cpu <= self.cpu + COMPUTE_EPSILON
            and self.used_memory_mib + resources.memory <= self.memory_mib
        )


@dataclass(frozen=True, slots=True)
class Scope:
    """How messages name the nodes looked at: the live Ready ones, or the whole cluster emptied."""

    where: str  # "most free <where>: ..."
    none: str  # "<none> has one"


LIVE = Scope(where="on a Ready node", none="no Ready node")
EMPTY = Scope(where="on any node", none="no node")

# (item, previous used memory, previous used compute or CPU, Ready position of its node)
_Entry = tuple[WorkGpu | WorkNode, int, float, int]


class Workspace:
    """Working usage for one cycle, with an undo journal.

    A failed gang is rolled back by restoring the exact previous values (not by
    subtracting), so float compute sums come back bit-for-bit and a partial
    gang never leaves anything behind.
    """

    def __init__(self, nodes: Iterable[NodeState], *, empty: bool, indexed: bool = False) -> None:
        # empty=True models the whole cluster (Ready or not) with nothing allocated:
        # what the cluster could ever hold.
        self.nodes = [
            WorkNode(
                name=n.name,
                ready=True if empty else n.ready,
                cpu=n.cpu,
                memory_mib=n.memory_mib,
                used_cpu=0.0 if empty else n.used_cpu,
                used_memory_mib=0 if empty else n.used_memory_mib,
                gpus=[
                    WorkGpu(
                        uuid=g.uuid,
                        index=g.index,
                        model=g.model,
                        memory_mib=g.memory_mib,
                        used_memory_mib=0 if empty else g.used_memory_mib,
                        used_compute_pct=0.0 if empty else g.used_compute_pct,
                        mig_mode=g.mig_mode,
                    )
                    for g in sorted(n.gpus, key=lambda g: (g.index, g.uuid))
                ],
            )
            for n in sorted(nodes, key=lambda n: n.name)
        ]
        self.ready_nodes = [n for n in self.nodes if n.ready]
        for pos, node in enumerate(self.ready_nodes):
            node.pos = pos
        self._by_name = {n.name: n for n in self.nodes}
        self._gpu_at = {(n.name, g.uuid): (n, g) for n in self.nodes for g in n.gpus}
        self._journal: list[_Entry] = []
        self.index = FreeIndex(self.ready_nodes) if indexed else None
        self.version = 0  # bumped by commit(); keys caches of results that hold for one state only

    def mark(self) -> int:
        """A point to roll back to."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every change made since ``mark``."""
        while len(self._journal) > mark:
            item, memory, other, pos = self._journal.pop()
            item.used_memory_mib = memory
            if isinstance(item, WorkGpu):
                item.used_compute_pct = other
            else:
                item.used_cpu = other
            self._touched(pos)

    def commit(self) -> None:
        """Declare the current state final for this cycle (it will not be rolled back)."""
        self.version += 1

    def _write(self, item: WorkGpu | WorkNode, memory: int, other: float, pos: int) -> None:
        if isinstance(item, WorkGpu):
            self._journal.append((item, item.used_memory_mib, item.used_compute_pct, pos))
            item.used_compute_pct = other
        else:
            self._journal.append((item, item.used_memory_mib, item.used_cpu, pos))
            item.used_cpu = other
        item.used_memory_mib = memory
        self._touched(pos)

    def _touched(self, pos: int) -> None:
        if self.index is not None and pos >= 0:
            self.index.dirty.add(pos)

    def place_gang(self, tasks: Sequence[TaskRequest]) -> tuple[list[SlicePlacement], int | None]:
        """Place tasks in order; (placements, None) or (partial, index of the first that failed).

        The caller rolls back on failure: it still needs the partial state to say what was short.
        """
        placements: list[SlicePlacement] = []
        cursors: dict[ShapeKey, int] = {}
        for i, task in enumerate(tasks):
            placed = self.place_task(task, cursors)
            if placed is None:
                return placements, i
            placements.extend(placed)
        return placements, None

    def place_task(self, task: TaskRequest, cursors: dict[ShapeKey, int]) -> list[SlicePlacement] | None:
        """Place one task on the first Ready node with room; None if none has.

        ``cursors`` is shared by the tasks of one placement attempt: usage only grows
        within an attempt, so a node that refused a shape refuses it again and the next
        task of the same shape can start where the last one landed. A 256-task gang is
        then one pass over the nodes, not 256.
        """
        res = task.resources
        if res.kind is GpuKind.MIG:
            return None
        key = shape_key(res)
        nodes = self.ready_nodes
        pos = cursors.get(key, 0) - 1
        while (pos := pos + 1) < len(nodes):
            if self.index is not None:  # jump over nodes that cannot hold it
                pos = self.index.next_node(res, pos)
                if pos < 0:
                    break
            node = nodes[pos]
            if not node.holds_host(res):
                continue
            picks = pick_gpus(node, res)
            if picks is None:
                continue
            cursors[key] = pos
            self._write(node, node.used_memory_mib + res.memory, node.used_cpu + res.cpu, pos)
            if not picks:
                return [SlicePlacement(task.task_id, node.name, None, None, 0, 0.0)]
            out = []
            for gpu, memory, compute in picks:
                self._write(gpu, gpu.used_memory_mib + memory, gpu.used_compute_pct + compute, pos)
                out.append(SlicePlacement(task.task_id, node.name, gpu.uuid, gpu.index, memory, compute))
            return out
        cursors[key] = len(nodes)
        return None

    def release(self, placements: Iterable[SlicePlacement], host: Iterable[tuple[str, float, int]]) -> None:
        """Free what a running job holds (journaled). Usage never drops below zero."""
        for p in placements:
            found = self._gpu_at.get((p.node, p.gpu_uuid or ""))
            if found is not None:
                node, gpu = found
                memory = max(0, gpu.used_memory_mib - p.memory_mib)
                self._write(gpu, memory, max(0.0, gpu.used_compute_pct - p.compute_pct), node.pos)
        for name, cpu, memory_mib in host:
            work = self._by_name.get(name)
            if work is not None:
                memory = max(0, work.used_memory_mib - memory_mib)
                self._write(work, memory, max(0.0, work.used_cpu - cpu), work.pos)

    def hold_since(self, mark: int) -> None:
        """Keep, on everything changed since ``mark``, the larger of its usage then and now.

        After simulating "release the victims, place the preemptor", this holds the
        victims' capacity (they have not stopped yet) and whatever the preemptor took
        beyond it, so no later job in the cycle can take room that is spoken for.
        """
        first: dict[int, _Entry] = {}
        for entry in self._journal[mark:]:
            first.setdefault(id(entry[0]), entry)
        now = {k: (e[0].used_memory_mib, _other(e[0])) for k, e in first.items()}
        self.rollback(mark)
        for k, (item, memory, other, pos) in first.items():
            self._write(item, max(memory, now[k][0]), max(other, now[k][1]), pos)


def _other(item: WorkGpu | WorkNode) -> float:
    return item.used_compute_pct if isinstance(item, WorkGpu) else item.used_cpu


def pick_gpus(node: WorkNode, res: Resources) -> list[tuple[WorkGpu, int, float]] | None:
    """The GPUs (with memory, compute) a task would take on this node, first fit; None if it can't."""
    kind = res.kind
    if kind is GpuKind.NONE:
        return []
    if kind is GpuKind.WHOLE:
        # Whole GPUs are exclusive: only completely idle devices, all on this one node.
        idle = [g for g in node.gpus if g.serves(res) and g.idle]
        if len(idle) < res.gpu_count:
            return None
        return [(g, g.memory_mib, 100.0) for g in idle[: res.gpu_count]]
    for gpu in node.gpus:
        if not gpu.serves(res):
            continue
        # The missing half of a slice is a share of *this* GPU, so demand is per candidate.
        memory, compute = res.demand_on(gpu.memory_mib)
        if gpu.holds(memory, compute):
            return [(gpu, memory, compute)]
    return None


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


# Per-node figures kept by FreeIndex, in this order.
_CPU, _MEM, _IDLE, _GPU_MEM, _GPU_PCT, _ALL_MEM, _ALL_PCT = range(7)


def _figures(node: WorkNode) -> tuple[list[float], int, int]:
    """(free cpu, memory, idle GPUs, most free GPU memory, most free compute), and those two GPUs."""
    idle, best_mem, best_pct, mem_at, pct_at = 0, -1, -1.0, -1, -1
    total_mem, total_pct = 0, 0.0
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
    free = [node.cpu - node.used_cpu, float(node.memory_mib - node.used_memory_mib), float(idle)]
    return [*free, float(best_mem), best_pct, float(total_mem), total_pct], mem_at, pct_at


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
        self._trees = [_MaxTree([r[k] for r in self._rows]) for k in range(5)]
        self._totals = [math.fsum(r[k] for r in self._rows) for k in range(7)]

    def _refresh(self) -> None:
        for pos in sorted(self.dirty):
            row, mem_at, pct_at = _figures(self._nodes[pos])
            old = self._rows[pos]
            for k in range(7):
                self._totals[k] += row[k] - old[k]
            for k in range(5):
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
        """The first Ready node from ``start`` on that has enough of the figure ``res`` needs; -1 if none.

        Exact: a node skipped here cannot hold the task, so first fit lands on the same node.
        """
        kind = res.kind
        if kind is GpuKind.WHOLE:
            figure, need = _IDLE, float(res.gpu_count)
        elif kind is GpuKind.FRACTION:
            figure, need = _GPU_PCT, float(res.gpus or 0) * 100 - COMPUTE_EPSILON
        elif kind is GpuKind.SLICE and res.gpu_compute is not None:
            figure, need = _GPU_PCT, res.gpu_compute - COMPUTE_EPSILON
        elif kind is GpuKind.SLICE:
            figure, need = _GPU_MEM, float(res.gpu_memory or 0)
        else:
            figure, need = _CPU, res.cpu - COMPUTE_EPSILON
        self._refresh()
        return self._trees[figure].first_at_least(need, start)

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


def _ratio(free: float, need: float) -> float:
    return free / need if need > 0 else float("inf")


def _gpu_shortage(nodes: list[WorkNode], task: TaskRequest, scope: Scope) -> str | None:
    """What keeps a GPU task off every node's GPUs, ignoring host CPU/memory; None if GPUs suffice."""
    res = task.resources
    gpus = [(n, g) for n in nodes for g in n.gpus]
    usable = [(n, g) for n, g in gpus if g.serves(res)]
    head = f"task {task.label} needs"
    if not usable:
        if not gpus:
            return f"{head} a GPU; {scope.none} has one"
        models = sorted({g.model for _, g in gpus if not g.mig_mode})
        if res.gpu_models and not any(res.fits_model(m) for m in models):
            wanted = " or ".join(res.gpu_models)
            offered = ", ".join(models) or "none"
            return f"{head} a GPU of model {wanted}; {scope.none} has one (models: {offered})"
        return f"{head} a GPU outside MIG mode; {scope.none} has one"
    if res.kind is GpuKind.WHOLE:
        counts = {n.name: 0 for n, _ in usable}
        for n, g in usable:
            counts[n.name] += g.idle
        best = max(counts, key=counts.__getitem__)  # first of equals: nodes are in name order
        if counts[best] >= res.gpu_count:
            return None
        return (
            f"{head} {plural(res.gpu_count, 'idle whole GPU')} on one node; "
            f"most idle {scope.where}: {counts[best]} ({best})"
        )
    scored = []
    for n, g in usable:
        memory, compute = res.demand_on(g.memory_mib)
        if g.holds(memory, compute):
            return None
        free_mem = max(0, g.memory_mib - g.used_memory_mib)
        free_pct = max(0.0, 100.0 - g.used_compute_pct)
        score = min(_ratio(free_mem, memory), _ratio(free_pct, compute))
        scored.append((score, n, g, memory, compute, free_mem, free_pct))
    # max() keeps the first of equals, so ties go to node name / GPU index order.
    _, n, g, memory, compute, free_mem, free_pct = max(scored, key=lambda s: s[0])
    return (
        f"{head} {format_mib(memory)} GPU memory and {pct(compute)} compute on one GPU; "
        f"most free {scope.where}: {format_mib(free_mem)} / {pct(free_pct)} ({n.name}, GPU {g.index})"
    )


def shortage(cluster: Workspace, task: TaskRequest, placed_before: int, scope: Scope) -> str:
    """Say what is short for the first task of a gang that did not fit, in the state where it failed."""
    nodes = cluster.ready_nodes
    res = task.resources
    message = _gpu_shortage(nodes, task, scope) if res.kind is not GpuKind.NONE else None
    if message is None:
        if any(n.holds_host(res) for n in nodes):
            message = (
                f"task {task.label} fits no single node: the GPUs it could use and the free "
                f"cpu/memory it needs are on different nodes"
            )
        else:
            best = max(
                nodes,
                key=lambda n: min(
                    _ratio(n.cpu - n.used_cpu, res.cpu), _ratio(n.memory_mib - n.used_memory_mib, res.memory)
                ),
            )
            free_cpu = max(0.0, best.cpu - best.used_cpu)
            free_mem = max(0, best.memory_mib - best.used_memory_mib)
            message = (
                f"task {task.label} needs cpu {res.cpu:g} and {format_mib(res.memory)} memory on one node; "
                f"most free {scope.where}: cpu {free_cpu:g} / {format_mib(free_mem)} memory ({best.name})"
            )
    if placed_before:
        # Earlier tasks of the same gang were placed tentatively, so "free" excludes what they took.
        message += f" (after placing {plural(placed_before, 'earlier task')} of this job)"
    return message
