"""Steps 1 and 2 of a cycle: queue quotas, and fair-share order over the queue tree.

A job's *charge* is what it holds: GPU-equivalents (a whole GPU is 1, a slice
is max(memory share, compute share) of the GPU it landed on) plus the CPU
and memory of its tasks. A queue's usage is the sum of its running jobs'
charges; a parent's includes its descendants'.

Which resources a queue's quota governs: those it gives a positive guaranteed
amount or borrowing limit. Quotas are usually set on GPUs only, and a zero
CPU guarantee there means "not limited", not "no CPU". A queue that
guarantees nothing at all (or is not configured) is owed nothing: everything
it holds is borrowed, and queues under their guarantee can reclaim it.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import (
    COMPUTE_EPSILON,
    Amounts,
    PendingJob,
    QueueState,
    RunningJob,
    SlicePlacement,
)

QUOTA_EXCEEDED = "QuotaExceeded"
"""Placing the job would take its queue (or an ancestor) past its borrowing limit."""

_FIELDS = ("gpu", "cpu", "memory_mib")
_NAMES = {"gpu": "gpu", "cpu": "cpu", "memory_mib": "memory"}


def gpu_charge(placements: Iterable[SlicePlacement], gpu_memory: Mapping[str, int]) -> float:
    """GPU-equivalents of these placements: each the larger of its memory and compute share.

    A whole GPU is taken with all its memory and 100% compute, so it counts 1.
    A GPU missing from the snapshot is charged by its compute share alone.
    """
    total = 0.0
    for p in placements:
        if p.gpu_uuid is None:
            continue
        size = gpu_memory.get(p.gpu_uuid, 0)
        share = p.compute_pct / 100
        total += max(p.memory_mib / size, share) if size else share
    return total


@dataclass(frozen=True, slots=True)
class Shape:
    """One task's request digested for a cycle: bounds over the GPU sizes it could land on.

    A slice's charge (and a fraction's memory) depends on the GPU it lands on, so quota
    checks before placement use these bounds, and placement uses them to refuse early.
    """

    kind: GpuKind
    gpu_count: int
    cpu: float
    memory: int
    compute_lb: float  # least compute percent it takes on any GPU it could use
    gpu_memory_lb: int  # least GPU memory it takes on any GPU it could use
    charge_lb: float  # least GPU-equivalents it is charged
    charge_ub: float  # most GPU-equivalents it is charged
    varies: bool  # whether its GPU demand depends on which GPU it lands on

    @property
    def is_share(self) -> bool:
        """A fraction or slice of one GPU."""
        return self.kind in (GpuKind.FRACTION, GpuKind.SLICE)

    @classmethod
    def of(cls, res: Resources, gpu_models: Iterable[tuple[str, int]]) -> Shape:
        """Digest ``res`` against the (model, memory MiB) of the GPUs outside MIG mode."""
        kind = res.kind
        count = res.gpu_count
        if kind in (GpuKind.NONE, GpuKind.MIG, GpuKind.WHOLE):
            charge = float(count) if kind is GpuKind.WHOLE else res.mig_share
            return cls(kind, count, res.cpu, res.memory, 0.0, 0, charge, charge, False)
        demands = []
        for model, size in gpu_models:
            memory, compute = res.demand_on(size)
            if res.fits_model(model) and memory <= size and compute <= 100.0 + COMPUTE_EPSILON:
                demands.append((memory, compute, res.charge_on(size)))
        if not demands:  # fits no GPU: it will be refused by placement, bounds do not matter
            demands = [(0, 0.0, 0.0)]
        memories, computes, charges = zip(*demands, strict=True)
        varies = len(set(demands)) > 1
        return cls(
            kind, count, res.cpu, res.memory, min(computes), min(memories), min(charges), max(charges), varies
        )


def running_charge(job: RunningJob, gpu_memory: Mapping[str, int]) -> Amounts:
    """What a running job holds (per-task host usage when given, else its totals)."""
    if job.host_usage:
        cpu = sum(c for _, c, _ in job.host_usage)
        memory = sum(m for _, _, m in job.host_usage)
    else:
        cpu, memory = job.cpu, job.memory_mib
    return Amounts(gpu_charge(job.placements, gpu_memory), cpu, float(memory))


def _num(value: float) -> str:
    return f"{round(value, 2):g}"


def _show(field: str, value: float) -> str:
    return format_mib(max(0, round(value))) if field == "memory_mib" else _num(value)


@dataclass(frozen=True, slots=True)
class _Quota:
    """One queue's limits per governed resource (None: not governed)."""

    guaranteed: dict[str, float | None]
    limit: dict[str, float | None]  # guaranteed + borrowing limit


def _quota(queue: QueueState | None) -> _Quota:
    if queue is None:  # not configured: owed nothing, limited by nothing
        return _Quota(dict.fromkeys(_FIELDS, 0.0), dict.fromkeys(_FIELDS))
    guaranteed: dict[str, float | None] = {}
    limit: dict[str, float | None] = {}
    owes_nothing = all(getattr(queue.guaranteed, f) <= 0 for f in _FIELDS)
    for f in _FIELDS:
        owed = getattr(queue.guaranteed, f)
        borrow = None if queue.borrowing_limit is None else getattr(queue.borrowing_limit, f)
        governed = owed > 0 or (borrow is not None and borrow > 0)
        guaranteed[f] = owed if governed or owes_nothing else None
        limit[f] = owed + borrow if governed and borrow is not None else None
    return _Quota(guaranteed, limit)


def _over(amounts: Amounts, bounds: Mapping[str, float | None]) -> str | None:
    """The first governed resource where ``amounts`` exceeds the bound; None if within all."""
    for f in _FIELDS:
        bound = bounds[f]
        if bound is not None and getattr(amounts, f) > bound + COMPUTE_EPSILON:
            return f
    return None


class QueueTree:
    """The queue hierarchy with live usage, for one cycle.

    Usage changes as the cycle binds, reserves and evicts, so later decisions
    in the same cycle (quota, fairness, reclaim) see the earlier ones.
    """

    def __init__(self, queues: Iterable[QueueState], names: Iterable[str], totals: Amounts) -> None:
        self.states = {q.name: q for q in sorted(queues, key=lambda q: q.name)}
        self._quotas = {name: _quota(q) for name, q in self.states.items()}
        for name in sorted(set(names) - set(self.states)):
            self._quotas[name] = _quota(None)
        self.parent: dict[str, str | None] = {}
        for name in sorted(self._quotas):
            state = self.states.get(name)
            parent = state.parent if state is not None else None
            # An unknown parent makes a root; a cycle in the configuration is cut where found.
            if parent not in self.states or parent == name or name in self._ancestors(parent):
                parent = None
            self.parent[name] = parent
        self.paths = {name: (name, *self._ancestors(self.parent[name])) for name in self.parent}
        self.children: dict[str | None, list[str]] = {}
        for name in sorted(self.parent):
            self.children.setdefault(self.parent[name], []).append(name)
        self.usage = dict.fromkeys(self.parent, Amounts())
        self.own = dict.fromkeys(self.parent, Amounts())
        self._totals = totals

    def _ancestors(self, name: str | None) -> tuple[str, ...]:
        out: list[str] = []
        while name is not None and name not in out:
            out.append(name)
            name = self.parent.get(name)
        return tuple(out)

    def add(self, queue: str, amounts: Amounts) -> None:
        """Charge ``amounts`` to a queue and its ancestors (negative to uncharge)."""
        self.own[queue] = self.own[queue] + amounts
        for name in self.paths[queue]:
            self.usage[name] = self.usage[name] + amounts

    def weight(self, queue: str) -> float:
        state = self.states.get(queue)
        # The API refuses weights <= 0; a floor keeps a bad snapshot from dividing by zero.
        return max(state.weight if state is not None else 1.0, 1e-9)

    def share(self, queue: str, *, own: bool = False) -> float:
        """Weighted dominant share: max over resources of usage / cluster total, over the weight."""
        usage = self.own[queue] if own else self.usage[queue]
        shares = [
            getattr(usage, f) / getattr(self._totals, f) for f in _FIELDS if getattr(self._totals, f) > 0
        ]
        return max(shares, default=0.0) / self.weight(queue)

    def limit_breach(
        self, queue: str, charge: Amounts, removed: Mapping[str, Amounts] | None = None
    ) -> str | None:
        """Why adding ``charge`` would pass a borrowing limit on the queue's path; None if it would not."""
        for name in self.paths[queue]:
            quota = self._quotas[name]
            usage = self.usage[name] - (removed or {}).get(name, Amounts())
            field = _over(usage + charge, quota.limit)
            if field is not None:
                limit = quota.limit[field] or 0.0
                owed = quota.guaranteed[field] or 0.0
                return (
                    f"queue '{name}' is at its borrowing limit: {_NAMES[field]} "
                    f"{_show(field, getattr(usage, field))}/{_show(field, limit)} "
                    f"(guaranteed {_show(field, owed)} + borrowing {_show(field, limit - owed)}); "
                    f"this job needs {_show(field, getattr(charge, field))} more"
                )
        return None

    def within_guarantee(
        self, queue: str, charge: Amounts, removed: Mapping[str, Amounts] | None = None
    ) -> bool:
        """Whether the queue and every ancestor stay within their guaranteed quota with ``charge`` added."""
        removed = removed or {}
        return all(
            _over(self.usage[name] - removed.get(name, Amounts()) + charge, self._quotas[name].guaranteed)
            is None
            for name in self.paths[queue]
        )

    def over_guarantee(
        self, queue: str, removed: Mapping[str, Amounts], extra: Amounts = Amounts()
    ) -> str | None:
        """The first queue on the path above its guarantee, less ``removed`` plus ``extra``; or None."""
        return next((name for name in self.paths[queue] if self.borrows(name, removed, extra)), None)

    def borrows(self, name: str, removed: Mapping[str, Amounts], extra: Amounts = Amounts()) -> bool:
        """Whether this one queue is above its guarantee, less ``removed`` plus ``extra``."""
        usage = self.usage[name] - removed.get(name, Amounts()) + extra
        return _over(usage, self._quotas[name].guaranteed) is not None

    def keeps_guarantee(self, name: str, before: Mapping[str, Amounts], after: Mapping[str, Amounts]) -> bool:
        """Whether going from usage less ``before`` to less ``after`` keeps the queue at or above its
        guarantee in every resource it was borrowing (reclaim takes back borrowed capacity only)."""
        guaranteed = self._quotas[name].guaranteed
        was = self.usage[name] - before.get(name, Amounts())
        now = self.usage[name] - after.get(name, Amounts())
        for f in _FIELDS:
            bound = guaranteed[f]
            if bound is not None and getattr(was, f) > bound + COMPUTE_EPSILON:
                if getattr(now, f) < bound - COMPUTE_EPSILON:
                    return False
        return True

    def below_common(self, queue: str, other: str) -> tuple[str, ...]:
        """The queues on ``queue``'s path below its lowest common ancestor with ``other``."""
        shared = set(self.paths[other])
        return tuple(itertools.takewhile(lambda name: name not in shared, self.paths[queue]))

    def removal(self, charges: Iterable[tuple[str, Amounts]]) -> dict[str, Amounts]:
        """Per queue, the total of these (queue, charge) pairs within its subtree."""
        out: dict[str, Amounts] = {}
        for queue, charge in charges:
            for name in self.paths[queue]:
                out[name] = out.get(name, Amounts()) + charge
        return out


def job_order(job: PendingJob) -> tuple[int, object, uuid.UUID]:
    """Within a queue: priority (highest first), then submit time, then id."""
    return (-job.priority, job.submitted_at, job.job_id)


class FairOrder:
    """Hands out pending jobs in hierarchical DRF order.

    Each queue keeps a heap of its children (and of its own jobs, if it has
    children too) keyed by weighted dominant share. A usage change pushes fresh
    entries for the queues above it; stale entries are skipped when they surface.
    """

    def __init__(self, tree: QueueTree, jobs: Iterable[PendingJob]) -> None:
        self._tree = tree
        by_queue: dict[str, list[PendingJob]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        self._jobs = {q: deque(sorted(js, key=job_order)) for q, js in by_queue.items()}
        self._left = dict.fromkeys(tree.parent, 0)
        for queue, queued in self._jobs.items():
            for name in tree.paths[queue]:
                self._left[name] += len(queued)
        self._heaps: dict[str | None, list[tuple[float, str, bool, int]]] = {}
        self._version: dict[tuple[str, bool], int] = {}
        for name in sorted(tree.parent):
            self._push(name, own=False)
            self._push(name, own=True)

    def _active(self, name: str, own: bool) -> bool:
        if own:
            return bool(self._tree.children.get(name)) and bool(self._jobs.get(name))
        return self._left[name] > 0

    def _push(self, name: str, *, own: bool) -> None:
        if not self._active(name, own):
            return
        version = self._version.get((name, own), 0) + 1
        self._version[(name, own)] = version
        share = self._tree.share(name, own=own)
        heapq.heappush(
            self._heaps.setdefault(name if own else self._tree.parent[name], []), (share, name, own, version)
        )

    def usage_changed(self, queue: str) -> None:
        """Re-rank the queue and its ancestors after their usage changed."""
        self._push(queue, own=True)
        for name in self._tree.paths[queue]:
            self._push(name, own=False)

    def pop(self) -> PendingJob | None:
        """The next job, or None when every queue is done."""
        level: str | None = None
        while True:
            heap = self._heaps.get(level, [])
            while heap and not (
                self._active(heap[0][1], heap[0][2]) and self._version[heap[0][1:3]] == heap[0][3]
            ):
                heapq.heappop(heap)
            if not heap:
                return None
            _, name, own, _ = heap[0]
            if own or not self._tree.children.get(name):
                job = self._jobs[name].popleft()
                for above in self._tree.paths[name]:
                    self._left[above] -= 1
                return job
            level = name
