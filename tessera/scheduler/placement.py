"""Placement on a working copy of the cluster: the fit rules every scheduler shares.

Capacity is never over-committed: per GPU, memory and compute each stay within
the device; per node, CPU and memory likewise. Whole GPUs take idle devices
only; fractions and slices share a GPU outside MIG mode. Tasks go to the first
Ready node (by name) and first GPUs (by index) that have room.

:class:`Workspace` holds the usage for one cycle with an undo journal, so a
gang is all-or-nothing and preemption can be simulated and taken back.
:class:`FreeIndex` keeps exact maxima and totals of free capacity as the
workspace changes (freeindex.py), so a task that cannot fit anywhere is
refused in O(log nodes) instead of by scanning every GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources, mig_share
from tessera.scheduler.freeindex import FreeIndex, Scope, pct, plural
from tessera.scheduler.model import COMPUTE_EPSILON, GpuState, NodeState, SlicePlacement, TaskRequest

if TYPE_CHECKING:
    from tessera.scheduler.scoring import Scorer

ShapeKey = tuple[object, ...]


FIRST_FIT = "firstfit"  # the placement that scores nothing: first Ready node by name that fits


@dataclass(frozen=True, slots=True)
class Ranking:
    """How a job's tasks choose among the nodes that fit: a placement policy and data locality."""

    policy: str
    locality: dict[str, float] | None = None
    only: frozenset[str] | None = None  # required data locality: no other node may be chosen


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
    # A GPU in MIG mode lists its MIG instances, each a WorkGpu of its own (model: the profile)
    # with its parent set and its compute share of the parent (slices of 7, in percent).
    instances: tuple[WorkGpu, ...] = ()
    parent: WorkGpu | None = None
    share: float = 0.0
    # Topology groups for multi-GPU tasks: its NVLink island (GPUs linked directly or through
    # others) and NUMA node; -1 when the inventory does not say.
    island: int = -1
    numa: int = -1

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
    tallies: dict[int, Tally] | None = None  # tasks held per request class, once a scorer asks

    def tally(self, cls: int) -> Tally:
        """The count of tasks of request class ``cls`` on this node."""
        if self.tallies is None:
            self.tallies = {}
        found = self.tallies.get(cls)
        if found is None:
            found = self.tallies[cls] = Tally()
        return found

    def holds_host(self, resources: Resources) -> bool:
        """Whether the node has the task's CPU and memory left."""
        return (
            self.used_cpu + resources.cpu <= self.cpu + COMPUTE_EPSILON
            and self.used_memory_mib + resources.memory <= self.memory_mib
        )


# (item, previous used memory, previous used compute or CPU, Ready position of its node)
_Entry = tuple["WorkGpu | WorkNode | Tally", int, float, int]
# (item, memory, compute or CPU, Ready position of its node): an amount of usage to add or take off
Delta = tuple[WorkGpu | WorkNode, int, float, int]


@dataclass(slots=True)
class Tally:
    """A journaled count kept on a node: how many tasks of one request class it holds (scoring.py).

    It borrows the journal's two figures: ``used_memory_mib`` is the count, ``used_cpu`` is unused.
    """

    used_memory_mib: int = 0
    used_cpu: float = 0.0


def request_class(res: Resources) -> int:
    """The policies' class of a request: -1 no GPU, 0 a share of one GPU or a MIG instance, k whole GPUs."""
    kind = res.kind
    if kind is GpuKind.NONE:
        return -1
    return res.gpu_count if kind is GpuKind.WHOLE else 0


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
                gpus=[_work_gpu(g, empty) for g in sorted(n.gpus, key=lambda g: (g.index, g.uuid))],
            )
            for n in sorted(nodes, key=lambda n: n.name)
        ]
        for node, state in zip(self.nodes, sorted(nodes, key=lambda n: n.name), strict=True):
            _topology(node, state)
        self.ready_nodes = [n for n in self.nodes if n.ready]
        for pos, node in enumerate(self.ready_nodes):
            node.pos = pos
        self._by_name = {n.name: n for n in self.nodes}
        self._gpu_at = {
            (n.name, i.uuid): (n, i) for n in self.nodes for g in n.gpus for i in (g, *g.instances)
        }
        self._journal: list[_Entry] = []
        self.index = FreeIndex(self.ready_nodes) if indexed else None
        self.scorer: Scorer | None = None  # node choice by a placement policy; first fit without one
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

    def _write(self, item: WorkGpu | WorkNode | Tally, memory: int, other: float, pos: int) -> None:
        if isinstance(item, WorkGpu):
            self._journal.append((item, item.used_memory_mib, item.used_compute_pct, pos))
            item.used_compute_pct = other
        else:
            self._journal.append((item, item.used_memory_mib, item.used_cpu, pos))
            item.used_cpu = other
        item.used_memory_mib = memory
        self._touched(pos)

    def _touched(self, pos: int) -> None:
        if pos >= 0:
            if self.index is not None:
                self.index.dirty.add(pos)
            if self.scorer is not None:
                self.scorer.dirty.add(pos)

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

    def place_task(
        self, task: TaskRequest, cursors: dict[ShapeKey, int], rank: Ranking | None = None
    ) -> list[SlicePlacement] | None:
        """Place one task on a Ready node with room; None if none has.

        With a ``rank`` (a placement policy, and the job's data locality) and a scorer, the
        policy chooses the node (scoring.py). Otherwise first fit: ``cursors`` is shared by the
        tasks of one placement attempt: usage only grows within an attempt, so a node that
        refused a shape refuses it again and the next task of the same shape can start where the
        last one landed. A 256-task gang is then one pass over the nodes, not 256.
        """
        res = task.resources
        only = rank.only if rank is not None else None
        scored = rank is not None and rank.policy != FIRST_FIT
        if scored and rank is not None and self.scorer is not None and res.kind is not GpuKind.MIG:
            chosen = self.scorer.choose(res, rank.policy, rank.locality, only)
            if chosen is None:
                return None
            return self._take(task, *chosen)
        key = shape_key(res)
        nodes = self.ready_nodes
        pos = cursors.get(key, 0) - 1
        while (pos := pos + 1) < len(nodes):
            if self.index is not None:  # jump over nodes that cannot hold it
                pos = self.index.next_node(res, pos)
                if pos < 0:
                    break
            node = nodes[pos]
            if (only is not None and node.name not in only) or not node.holds_host(res):
                continue
            fit = pick_gpus(node, res)
            if fit is None:
                continue
            cursors[key] = pos
            return self._take(task, pos, fit)
        cursors[key] = len(nodes)
        return None

    def _take(
        self, task: TaskRequest, pos: int, picks: list[tuple[WorkGpu, int, float]]
    ) -> list[SlicePlacement]:
        """Write one task's usage on the Ready node at ``pos`` and its GPUs (journaled)."""
        res, node = task.resources, self.ready_nodes[pos]
        self._write(node, node.used_memory_mib + res.memory, node.used_cpu + res.cpu, pos)
        if self.scorer is not None:
            tally = node.tally(request_class(res))
            self._write(tally, tally.used_memory_mib + 1, 0.0, pos)
        if not picks:
            return [SlicePlacement(task.task_id, node.name, None, None, 0, 0.0)]
        out = []
        for gpu, memory, compute in picks:
            self._write(gpu, gpu.used_memory_mib + memory, gpu.used_compute_pct + compute, pos)
            if gpu.parent is not None:  # a MIG instance: on its parent, with its compute share
                p = SlicePlacement(
                    task.task_id, node.name, gpu.parent.uuid, gpu.index, memory, gpu.share, gpu.uuid
                )
            else:
                p = SlicePlacement(task.task_id, node.name, gpu.uuid, gpu.index, memory, compute)
            out.append(p)
        return out

    def release(self, placements: Iterable[SlicePlacement], host: Iterable[tuple[str, float, int]]) -> None:
        """Free what a running job holds (journaled). Usage never drops below zero."""
        for p in placements:
            if p.mig_uuid is not None:  # a MIG instance is held whole
                instance = self._gpu_at.get((p.node, p.mig_uuid))
                if instance is not None:
                    self._write(instance[1], 0, 0.0, instance[0].pos)
                continue
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

    def gpu(self, node: str, uuid: str) -> tuple[WorkNode, WorkGpu] | None:
        """The working node and GPU of a placement; None if not in the snapshot."""
        return self._gpu_at.get((node, uuid))

    def node(self, name: str) -> WorkNode | None:
        return self._by_name.get(name)

    def shift(self, deltas: Iterable[Delta], sign: int) -> None:
        """Add (sign 1) or take off (sign -1) usage with no capacity check (journaled).

        Reservations hold capacity this way, and a backfill lifts them while it is placed.
        """
        for item, memory, other, pos in deltas:
            current = _other(item)
            self._write(item, item.used_memory_mib + sign * memory, current + sign * other, pos)

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


def _other(item: WorkGpu | WorkNode | Tally) -> float:
    return item.used_compute_pct if isinstance(item, WorkGpu) else item.used_cpu


def _topology(node: WorkNode, state: NodeState) -> None:
    """Number the node's NVLink islands (connected components of its peer links) and NUMA nodes."""
    if all(not g.nvlink_peers and g.numa_node is None for g in state.gpus):
        return  # the inventory says nothing about topology
    by_uuid = {g.uuid: g for g in node.gpus}
    links = {g.uuid: [p for p in g.nvlink_peers if p in by_uuid] for g in state.gpus}
    island = 0
    for gpu in node.gpus:
        if gpu.island >= 0 or not links.get(gpu.uuid):
            continue
        stack = [gpu]
        gpu.island = island
        while stack:
            for peer in links.get(stack.pop().uuid, ()):
                other = by_uuid[peer]
                if other.island < 0:
                    other.island = island
                    stack.append(other)
        island += 1
    for gpu, g in zip(node.gpus, sorted(state.gpus, key=lambda g: (g.index, g.uuid)), strict=True):
        gpu.numa = g.numa_node if g.numa_node is not None else -1


def _together(idle: list[WorkGpu], count: int) -> list[WorkGpu]:
    """Idle GPUs reordered so the first ``count`` share an NVLink island, else a NUMA node, if any can.

    Of the groups that can hold the task, the one with the fewest idle GPUs is used (best fit), so
    larger groups stay whole for larger tasks; ties go to the lowest GPU index.
    """
    for key in (lambda g: g.island, lambda g: g.numa):
        groups: dict[int, list[WorkGpu]] = {}
        for gpu in idle:
            if key(gpu) >= 0:
                groups.setdefault(key(gpu), []).append(gpu)
        fitting = [members for members in groups.values() if len(members) >= count]
        if fitting:
            best = min(fitting, key=lambda members: (len(members), members[0].index))
            return best + [g for g in idle if g not in best]
    return idle


def _work_gpu(g: GpuState, empty: bool) -> WorkGpu:
    gpu = WorkGpu(
        uuid=g.uuid,
        index=g.index,
        model=g.model,
        memory_mib=g.memory_mib,
        used_memory_mib=0 if empty else g.used_memory_mib,
        used_compute_pct=0.0 if empty else g.used_compute_pct,
        mig_mode=g.mig_mode,
    )
    if g.mig_mode:
        gpu.instances = tuple(
            WorkGpu(
                uuid=m.uuid,
                index=g.index,
                model=m.profile,
                memory_mib=m.memory_mib,
                used_memory_mib=m.memory_mib if m.used and not empty else 0,
                used_compute_pct=100.0 if m.used and not empty else 0.0,
                mig_mode=False,
                parent=gpu,
                share=mig_share(m.profile) * 100,
            )
            for m in g.mig
        )
    return gpu


def pick_gpus(node: WorkNode, res: Resources) -> list[tuple[WorkGpu, int, float]] | None:
    """The GPUs (with memory, compute) a task would take on this node, first fit; None if it can't.

    A MIG request takes a whole free MIG instance of its profile (memory and all of its compute).
    """
    kind = res.kind
    if kind is GpuKind.NONE:
        return []
    if kind is GpuKind.MIG:
        for gpu in node.gpus:
            for instance in gpu.instances:
                if instance.model == res.mig_profile and instance.idle:
                    return [(instance, instance.memory_mib, 100.0)]
        return None
    if kind is GpuKind.WHOLE:
        # Whole GPUs are exclusive: only completely idle devices, all on this one node.
        idle = [g for g in node.gpus if g.serves(res) and g.idle]
        count = res.gpu_count
        if len(idle) < count:
            return None
        if count > 1:
            idle = _together(idle, count)
        return [(g, g.memory_mib, 100.0) for g in idle[:count]]
    demands: dict[int, tuple[int, float]] = {}  # nodes usually have one GPU size: compute it once
    for gpu in node.gpus:
        if not gpu.serves(res):
            continue
        # The missing half of a slice is a share of *this* GPU, so demand is per candidate.
        demand = demands.get(gpu.memory_mib)
        if demand is None:
            demand = demands[gpu.memory_mib] = res.demand_on(gpu.memory_mib)
        memory, compute = demand
        if gpu.holds(memory, compute):
            return [(gpu, memory, compute)]
    return None


def _ratio(free: float, need: float) -> float:
    return free / need if need > 0 else float("inf")


def _gpu_shortage(nodes: list[WorkNode], task: TaskRequest, scope: Scope) -> str | None:
    """What keeps a GPU task off every node's GPUs, ignoring host CPU/memory; None if GPUs suffice."""
    res = task.resources
    gpus = [(n, g) for n in nodes for g in n.gpus]
    head = f"task {task.label} needs"
    if res.kind is GpuKind.MIG:
        return _mig_shortage(gpus, res, head, scope)
    usable = [(n, g) for n, g in gpus if g.serves(res)]
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


def _mig_shortage(
    gpus: list[tuple[WorkNode, WorkGpu]], res: Resources, head: str, scope: Scope
) -> str | None:
    instances = [i for _, g in gpus for i in g.instances if i.model == res.mig_profile]
    if not instances:
        offered = ", ".join(sorted({i.model for _, g in gpus for i in g.instances})) or "none"
        return f"{head} a MIG instance {res.mig_profile}; {scope.none} has one (profiles: {offered})"
    if any(i.idle for i in instances):
        return None
    return f"{head} a free MIG instance {res.mig_profile}; {scope.where}: {len(instances)}, all taken"


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
