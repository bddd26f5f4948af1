"""First-fit gang scheduler: the simplest correct policy, and the baseline others are measured against.

Jobs are taken by priority (then submit time, then id). Each job's tasks are
placed all-or-nothing onto the first Ready node (by name) and first GPUs (by
index) that have room. Capacity is never over-committed: per GPU, memory and
compute each stay within the device; per node, CPU and memory likewise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tessera.api.jobs import PendingReason
from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import (
    COMPUTE_EPSILON,
    GANG_TOO_LARGE,
    NO_NODES,
    NO_NODES_MESSAGE,
    NO_READY_NODES,
    NO_READY_NODES_MESSAGE,
    UNSCHEDULABLE,
    Bind,
    Decisions,
    NodeState,
    PendingJob,
    SlicePlacement,
    Snapshot,
    TaskRequest,
)

MIG_NOT_SUPPORTED = "MIG placement is not supported by the firstfit scheduler yet"


@dataclass(slots=True)
class _Gpu:
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
        return self.used_memory_mib == 0 and self.used_compute_pct <= COMPUTE_EPSILON

    def holds(self, memory_mib: int, compute_pct: float) -> bool:
        return (
            self.used_memory_mib + memory_mib <= self.memory_mib
            and self.used_compute_pct + compute_pct <= 100.0 + COMPUTE_EPSILON
        )

    def serves(self, resources: Resources) -> bool:
        """Whether a non-MIG request may use this GPU at all (model allow-list, not in MIG mode)."""
        return not self.mig_mode and resources.fits_model(self.model)


@dataclass(slots=True)
class _Node:
    """Mutable working copy of one node's host usage and GPUs."""

    name: str
    ready: bool
    cpu: float
    memory_mib: int
    used_cpu: float
    used_memory_mib: int
    gpus: list[_Gpu]

    def holds_host(self, resources: Resources) -> bool:
        return (
            self.used_cpu + resources.cpu <= self.cpu + COMPUTE_EPSILON
            and self.used_memory_mib + resources.memory <= self.memory_mib
        )


@dataclass(frozen=True, slots=True)
class _Scope:
    """How messages name the nodes looked at: the live Ready ones, or the whole cluster emptied."""

    where: str  # "most free <where>: ..."
    none: str  # "<none> has one"


_LIVE = _Scope(where="on a Ready node", none="no Ready node")
_EMPTY = _Scope(where="on any node", none="no node")


class _Cluster:
    """Working usage for one cycle, with an undo journal.

    A failed gang is rolled back by restoring the exact previous values (not by
    subtracting), so float compute sums come back bit-for-bit and a partial
    gang never leaves anything behind.
    """

    def __init__(self, nodes: Iterable[NodeState], *, empty: bool) -> None:
        # empty=True models the whole cluster (Ready or not) with nothing allocated:
        # what the cluster could ever hold.
        self.nodes = [
            _Node(
                name=n.name,
                ready=True if empty else n.ready,
                cpu=n.cpu,
                memory_mib=n.memory_mib,
                used_cpu=0.0 if empty else n.used_cpu,
                used_memory_mib=0 if empty else n.used_memory_mib,
                gpus=[
                    _Gpu(
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
        self._journal: list[tuple[_Gpu | _Node, int, float]] = []

    @property
    def ready_nodes(self) -> list[_Node]:
        return [n for n in self.nodes if n.ready]

    def mark(self) -> int:
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        while len(self._journal) > mark:
            item, memory, other = self._journal.pop()
            item.used_memory_mib = memory
            if isinstance(item, _Gpu):
                item.used_compute_pct = other
            else:
                item.used_cpu = other

    def place_gang(self, tasks: Sequence[TaskRequest]) -> tuple[list[SlicePlacement], int | None]:
        """Place tasks in order; (placements, None) or (partial, index of the first that failed).

        The caller rolls back on failure: it still needs the partial state to say what was short.
        """
        placements: list[SlicePlacement] = []
        for i, task in enumerate(tasks):
            placed = self._place(task)
            if placed is None:
                return placements, i
            placements.extend(placed)
        return placements, None

    def _place(self, task: TaskRequest) -> list[SlicePlacement] | None:
        res = task.resources
        if res.kind is GpuKind.MIG:
            return None
        for node in self.ready_nodes:
            if not node.holds_host(res):
                continue
            picks = _pick_gpus(node, res)
            if picks is None:
                continue
            self._journal.append((node, node.used_memory_mib, node.used_cpu))
            node.used_cpu += res.cpu
            node.used_memory_mib += res.memory
            if not picks:
                return [SlicePlacement(task.task_id, node.name, None, None, 0, 0.0)]
            out = []
            for gpu, memory, compute in picks:
                self._journal.append((gpu, gpu.used_memory_mib, gpu.used_compute_pct))
                gpu.used_memory_mib += memory
                gpu.used_compute_pct += compute
                out.append(SlicePlacement(task.task_id, node.name, gpu.uuid, gpu.index, memory, compute))
            return out
        return None


def _pick_gpus(node: _Node, res: Resources) -> list[tuple[_Gpu, int, float]] | None:
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


def _pct(value: float) -> str:
    return f"{round(value, 1):g}%"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _ratio(free: float, need: float) -> float:
    return free / need if need > 0 else float("inf")


def _gpu_shortage(nodes: list[_Node], task: TaskRequest, scope: _Scope) -> str | None:
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
            f"{head} {_plural(res.gpu_count, 'idle whole GPU')} on one node; "
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
        f"{head} {format_mib(memory)} GPU memory and {_pct(compute)} compute on one GPU; "
        f"most free {scope.where}: {format_mib(free_mem)} / {_pct(free_pct)} ({n.name}, GPU {g.index})"
    )


def _shortage(cluster: _Cluster, task: TaskRequest, placed_before: int, scope: _Scope) -> str:
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
        message += f" (after placing {_plural(placed_before, 'earlier task')} of this job)"
    return message


def _order(pending: Iterable[PendingJob]) -> list[PendingJob]:
    return sorted(pending, key=lambda j: (-j.priority, j.submitted_at, j.job_id))


class FirstFit:
    """First-fit, all-or-nothing gang scheduler (see the module docstring)."""

    name = "firstfit"

    def cycle(self, snapshot: Snapshot) -> Decisions:
        """Place pending jobs in priority order; every job not bound gets a reason."""
        jobs = _order(snapshot.pending)
        if not snapshot.nodes:
            return _all_waiting(jobs, NO_NODES, NO_NODES_MESSAGE)
        if not any(n.ready for n in snapshot.nodes):
            return _all_waiting(jobs, NO_READY_NODES, NO_READY_NODES_MESSAGE)

        live = _Cluster(snapshot.nodes, empty=False)
        empty: _Cluster | None = None  # built on the first failure only; most cycles never need it
        binds: list[Bind] = []
        pending: dict[uuid.UUID, PendingReason] = {}
        for job in jobs:
            if any(t.resources.kind is GpuKind.MIG for t in job.tasks):
                pending[job.job_id] = PendingReason(code=UNSCHEDULABLE, message=MIG_NOT_SUPPORTED)
                continue
            mark = live.mark()
            placements, failed = live.place_gang(job.tasks)
            if failed is None:
                binds.append(Bind(job.job_id, tuple(placements)))
                continue
            detail = _shortage(live, job.tasks[failed], failed, _LIVE)
            live.rollback(mark)

            if empty is None:
                empty = _Cluster(snapshot.nodes, empty=True)
            mark = empty.mark()
            _, never = empty.place_gang(job.tasks)
            if never is None:
                reason = PendingReason(code=UNSCHEDULABLE, message=f"waiting for capacity: {detail}")
            else:
                # First fit on the emptied cluster is a sufficient, not exact, test of "never fits":
                # a smarter packing might fit a mix of slices it refuses. It errs towards waiting.
                why = _shortage(empty, job.tasks[never], never, _EMPTY)
                size = _plural(len(job.tasks), "task")
                reason = PendingReason(
                    code=GANG_TOO_LARGE,
                    message=f"gang of {size} needs more than the whole cluster offers: {why}",
                )
            empty.rollback(mark)
            pending[job.job_id] = reason
        return Decisions(binds=tuple(binds), pending=pending)


def _all_waiting(jobs: list[PendingJob], code: str, message: str) -> Decisions:
    reason = PendingReason(code=code, message=message)
    return Decisions(binds=(), pending={job.job_id: reason for job in jobs})
