"""Step 5 of a cycle: a reservation for the job at the head of each queue, and backfill around it.

Without reservations a large gang starves: every time a GPU frees up, a small
job behind it takes it, and the gang never finds all of its room free at once.

**Reservation.** The first job of a queue that waits for capacity (it fits the
cluster, just not now, and no eviction may make room) gets one. The cycle works
out where and when it would fit if the running jobs ended as they declared:
it releases them in order of expected end until the gang fits (the shortest
such prefix, by galloping then halving). The latest expected end of those
*blockers* is the reservation's *shadow time*; it is unknown if one of them
declared no runtime. The part of that future placement that is free now is
held: no later job of the cycle can take it.

**Backfill.** A job may still use held capacity if it will be gone by the
shadow time: it declared an expected runtime and ``now + runtime`` is no later
than the shadow time of every reservation it lifts. A job with no expected
runtime never backfills into a reservation (it may use free capacity that no
reservation holds), nor does anything when the shadow time is unknown.

**Across cycles.** A job holding a reservation (pending code ``Reserved``) is
taken first in the next cycle, right after preemptors waiting for their
victims, so the room its blockers free is not taken by a queue that fair share
happens to put first. Each cycle recomputes the reservations from the snapshot;
nothing is stored but the pending code.

**Starvation bound.** If jobs end when they declared, the holder starts no later
than the latest expected end of its blockers: what it needs is either held now
or freed by them, and a backfill into it ends before then. A backfilled job that
runs past the shadow time it was admitted against (``backfill_until``) may be
preempted by a holder (see preempt.py), so an overrun cannot push the bound.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tessera.scheduler.freeindex import plural
from tessera.scheduler.model import PendingJob, RunningJob, SlicePlacement
from tessera.scheduler.placement import Delta, WorkGpu, Workspace
from tessera.scheduler.preempt import host_usage

RESERVED = "Reserved"
"""Next in its queue: capacity is held for it until the jobs it waits for end."""

# Place the job with these running jobs released (quota included). On success the placements
# stay in the workspace; None if it does not fit.
Place = Callable[[Sequence[RunningJob]], list[SlicePlacement] | None]


@dataclass(frozen=True, slots=True)
class Reservation:
    """Capacity held for one waiting job, and until when."""

    job: PendingJob
    shadow: datetime | None  # when it is expected to fit; None if a blocker declared no runtime
    blockers: tuple[RunningJob, ...]
    held: tuple[Delta, ...]
    gpus: frozenset[str]  # GPUs it will use
    nodes: frozenset[str]  # nodes it will use

    def admits(self, end: datetime) -> bool:
        """Whether a job ending at ``end`` may use the held capacity."""
        return self.shadow is not None and end <= self.shadow

    def overlaps(self, placements: Iterable[SlicePlacement]) -> bool:
        """Whether these placements take anything this reservation will need."""
        return any(p.gpu_uuid in self.gpus if p.gpu_uuid else p.node in self.nodes for p in placements)


def _end_key(job: RunningJob, now: datetime) -> tuple[bool, datetime, uuid.UUID]:
    end = job.expected_end
    return (end is None, end or now, job.job_id)


class Reservations:
    """The reservations of one cycle, made on its live workspace."""

    def __init__(self, ws: Workspace, running: Iterable[RunningJob], ready: set[str], now: datetime) -> None:
        self._ws = ws
        self.now = now
        useful = [j for j in running if any(p.node in ready for p in j.placements)]
        self._by_end = sorted(useful, key=lambda j: _end_key(j, now))
        self.made: list[Reservation] = []
        self.queues: set[str] = set()  # queues whose head has had its try this cycle

    def liftable(self, end: datetime) -> list[Reservation]:
        """The reservations a job ending at ``end`` may backfill into."""
        return [r for r in self.made if r.admits(end)]

    def reserve(self, job: PendingJob, place: Place, skip: Container[uuid.UUID]) -> Reservation | None:
        """Hold the room ``job`` will have once the fewest running jobs (by expected end) are gone.

        ``skip``: jobs already evicted this cycle, whose room is held for others. None if the job
        would not fit even with every running job gone (it waits for nodes, not for jobs).
        """
        self.queues.add(job.queue)
        ws = self._ws
        order = [j for j in self._by_end if j.job_id not in skip]
        start = ws.mark()
        marks = [start]  # marks[i]: the workspace with the first i jobs released

        def release_to(count: int) -> None:
            if count < len(marks) - 1:
                ws.rollback(marks[count])
                del marks[count + 1 :]
            while len(marks) - 1 < count:
                job_ = order[len(marks) - 1]
                ws.release(job_.placements, host_usage(job_))
                marks.append(ws.mark())

        def fits(count: int) -> bool:
            release_to(count)
            mark = ws.mark()
            ok = place(order[:count]) is not None
            ws.rollback(mark)
            return ok

        low, high = 0, 1  # it does not fit with none released (why it is here)
        while high < len(order) and not fits(high):
            low, high = high, 2 * high
        high = min(high, len(order))
        if high == 0 or (high == len(order) and not fits(high)):
            ws.rollback(start)
            return None
        while high - low > 1:
            mid = (low + high) // 2
            if fits(mid):
                high = mid
            else:
                low = mid
        release_to(high)
        placements = place(order[:high])
        assert placements is not None, "the prefix was just shown to fit"
        need = self._need(job, placements)
        ws.rollback(start)
        held = tuple(_held(need))
        ws.shift(held, 1)
        ws.commit()
        blockers = tuple(order[:high])
        ends = [b.expected_end for b in blockers]
        shadow = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
        reservation = Reservation(
            job=job,
            shadow=shadow,
            blockers=blockers,
            held=held,
            gpus=frozenset(p.gpu_uuid for p in placements if p.gpu_uuid),
            nodes=frozenset(p.node for p in placements),
        )
        self.made.append(reservation)
        return reservation

    def _need(self, job: PendingJob, placements: Sequence[SlicePlacement]) -> dict[int, Delta]:
        """What the placements take, per working GPU and node (by identity)."""
        ws = self._ws
        tasks = {t.task_id: t for t in job.tasks}
        need: dict[int, Delta] = {}
        hosts: dict[uuid.UUID, str] = {}
        for p in placements:
            hosts[p.task_id] = p.node
            found = ws.gpu(p.node, p.gpu_uuid) if p.gpu_uuid else None
            if found is None:
                continue
            node, gpu = found
            _, memory, compute, _ = need.get(id(gpu), (gpu, 0, 0.0, node.pos))
            need[id(gpu)] = (gpu, memory + p.memory_mib, compute + p.compute_pct, node.pos)
        for task_id, name in hosts.items():
            work = ws.node(name)
            if work is None:
                continue
            res = tasks[task_id].resources
            _, memory, cpu, _ = need.get(id(work), (work, 0, 0.0, work.pos))
            need[id(work)] = (work, memory + res.memory, cpu + res.cpu, work.pos)
        return need


def _held(need: dict[int, Delta]) -> Iterable[Delta]:
    """Of what the reservation will take, the part that is free now."""
    for item, memory, other, pos in need.values():
        free_memory = max(0, item.memory_mib - item.used_memory_mib)
        if isinstance(item, WorkGpu):
            free_other = max(0.0, 100.0 - item.used_compute_pct)
        else:
            free_other = max(0.0, item.cpu - item.used_cpu)
        held_memory, held_other = min(memory, free_memory), min(other, free_other)
        if held_memory > 0 or held_other > 0:
            yield (item, held_memory, held_other, pos)


def reserved_message(why: str, reservation: Reservation, now: datetime) -> str:
    """The pending reason of a job holding a reservation."""
    job = reservation.job
    names = [f"'{b.name}'" for b in reservation.blockers]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    where = plural(len(reservation.nodes), "node")
    end = "ends" if len(names) == 1 else "end"
    if reservation.shadow is None:
        silent = sum(1 for b in reservation.blockers if b.expected_end is None)
        when = (
            f"once {shown} {end} ({plural(silent, 'job')} declared no expected runtime, "
            f"so nothing backfills into the reservation)"
        )
    elif reservation.shadow <= now:
        when = f"as soon as {shown} {end} (past the expected runtime)"
    else:
        when = f"by {reservation.shadow:%Y-%m-%d %H:%M:%S} UTC, when {shown} {end}"
    return f"{why}; next in queue '{job.queue}': room held for it on {where}, expected to fit {when}"
