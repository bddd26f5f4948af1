"""Step 4 of a cycle: choose whole running gangs to evict so a pending job fits.

Two kinds of victim:

- **Preempted** (priority): a preemptible running job of the same queue with a
  strictly lower priority than the pending job.
- **Reclaimed** (quota): a running job whose queues (below the lowest common
  ancestor with the pending job's queue) are above their guarantee, taken for a
  pending job whose queue and ancestors stay within their guarantee once it is
  placed. Reclaim takes back borrowed capacity only: no queue is taken below
  its guarantee. It ignores priority and the preemptible flag.
- **Overran** (a broken promise): a job admitted as a backfill into held room
  that runs past the time it was admitted for (``backfill_until``), taken for
  a job that held a reservation last cycle (backfill.py). Evicted with reason
  Preempted. It ignores queues, priority and the preemptible flag: the room
  was lent on that promise.

Never a victim: a service replica (``protected``) unless its queue lets
services be preempted (``services_preemptible``): serving is not evicted for
training, nor for quota it borrows.

The set is the cheapest that lets the job's gang fit: candidates in order of
GPU-seconds lost (then lowest priority, newest, id), the shortest prefix that
fits, then each victim dropped again (most expensive first) if the job fits
without it. If evicting every candidate would not make room, nothing is
evicted.

Why this does not loop: the next cycle takes jobs whose placement stays within
guarantee first (the preemptor, if it reclaimed), then borrowers; within a
queue, by priority. So a victim must not be able to come back first and take
the room back: a priority victim is of the same queue and lower priority, and
if the preemptor borrows, the victim would borrow too when re-placed; a
reclaimed victim's queue is left at or above its guarantee, so re-placing it
would borrow. Room held for other preemptors in the cycle is not counted when
judging that: the next cycle will not see it until they bind. And for the rest
of the cycle, borrowers may not take a preemptor's queues past their guarantee
(cycle.py), or it would be a borrower itself next cycle.

What a pure cycle cannot promise: the snapshot does not say who is waiting on
whose victims, so next cycle an owed job of another queue that DRF takes first
may use part of the freed room. The preemptor then evicts again, rarely the
same job twice (seen once in 13,200 contended random replays; all converged).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tessera.scheduler.freeindex import plural
from tessera.scheduler.model import Amounts, PendingJob, RunningJob
from tessera.scheduler.quota import QueueTree, running_charge

PREEMPTING = "Preempting"
"""Running jobs are being evicted to make room for this job; it is placed once they stop."""
PREEMPTED = "Preempted"
RECLAIMED = "Reclaimed"


@dataclass(frozen=True, slots=True)
class Victim:
    """A running job that may be evicted for the pending job at hand, and why."""

    job: RunningJob
    charge: Amounts
    reason: str  # PREEMPTED or RECLAIMED
    # For a reclaim: its queues below the common ancestor with the preemptor's, all borrowing.
    borrowing: tuple[str, ...] = ()
    overran: bool = False  # a backfill past its time, evicted for a reservation holder


class Simulation(Protocol):
    """Victim removal simulated on the cycle's workspace (journaled, so it can be taken back)."""

    def mark(self) -> int: ...

    def rollback(self, mark: int) -> None: ...

    def release(self, victim: Victim) -> None:
        """Free what the victim holds."""

    def fits(self, victims: Sequence[Victim]) -> bool:
        """Whether the job fits now, within quota given these victims gone; the workspace is left as is."""


def host_usage(job: RunningJob) -> list[tuple[str, float, int]]:
    """Per-task (node, cpu, memory) of a running job; totals spread evenly when not given per task."""
    if job.host_usage:
        return list(job.host_usage)
    nodes = list({p.task_id: p.node for p in job.placements}.values())
    if not nodes:
        return []
    share = len(nodes)
    memory = [job.memory_mib // share + (1 if i < job.memory_mib % share else 0) for i in range(share)]
    return [(node, job.cpu / share, memory[i]) for i, node in enumerate(nodes)]


class Victims:
    """Eviction candidates for one cycle; a job is evicted at most once per cycle."""

    def __init__(
        self,
        running: Iterable[RunningJob],
        tree: QueueTree,
        gpu_memory: Mapping[str, int],
        ready: set[str],
        now: datetime,
    ) -> None:
        self._tree = tree
        self.charges = {job.job_id: running_charge(job, gpu_memory) for job in running}
        # Only jobs holding something on a Ready node can make room for a placement.
        useful = [j for j in running if any(p.node in ready for p in j.placements)]

        def cost(job: RunningJob) -> tuple[float, int, float, uuid.UUID]:
            lost = self.charges[job.job_id].gpu * max(0.0, (now - job.started_at).total_seconds())
            return (lost, job.priority, -job.started_at.timestamp(), job.job_id)

        self._ordered = sorted(useful, key=cost)
        self._overran = {j.job_id for j in useful if j.backfill_until is not None and j.backfill_until <= now}
        self._preemptible: dict[str, list[RunningJob]] = {}
        for job in self._ordered:
            if job.preemptible:
                self._preemptible.setdefault(job.queue, []).append(job)
        self.evicted: dict[uuid.UUID, Victim] = {}
        # jobs that gave back extra slices this cycle: what they hold is already spoken for
        self.frozen: set[uuid.UUID] = set()
        # (queue, charge) of this cycle's victims whose re-placement must borrow (see _valid).
        self._must_borrow: set[tuple[str, Amounts]] = set()
        # Room held for preemptors this cycle, per queue subtree. The tree counts it (quota and
        # fairness within the cycle), but the next cycle will not: the preemptor is pending again
        # until it binds. Whether a victim's queue borrows is judged without it.
        self._held: dict[str, Amounts] = {}

    def _without(self, victims: Iterable[Victim]) -> dict[str, Amounts]:
        """Per queue: what these victims and the held room take off its usage."""
        removed = self._tree.removal((v.job.queue, v.charge) for v in victims)
        for name, held in self._held.items():
            removed[name] = removed.get(name, Amounts()) + held
        return removed

    def candidates(self, job: PendingJob, most: Amounts) -> Iterator[Victim]:
        """Who may be evicted for ``job``, cheapest first (``most``: its largest possible charge)."""
        tree = self._tree
        # Reclaim needs the job's own queue within its guarantee whatever is evicted (victims never
        # share it); otherwise only its own queue's preemptible jobs are worth looking at.
        may_reclaim = not tree.borrows(job.queue, {}, most)
        overran = self._overran if job.reserved else set()
        pool = self._ordered if may_reclaim or overran else self._preemptible.get(job.queue, [])
        for running in pool:
            if running.job_id in self.evicted or running.job_id in self.frozen or running.protected:
                continue
            charge = self.charges[running.job_id]
            side = tree.below_common(running.queue, job.queue) if may_reclaim else ()
            if side and all(tree.borrows(name, self._held) for name in side):
                yield Victim(running, charge, RECLAIMED, side)
            elif running.preemptible and running.priority < job.priority and running.queue == job.queue:
                yield Victim(running, charge, PREEMPTED)
            elif running.job_id in overran:
                yield Victim(running, charge, PREEMPTED, overran=True)

    def _admissible(self, job: PendingJob, most: Amounts) -> Iterator[Victim]:
        """Candidates in order, less reclaims that would take a queue below its guarantee."""
        after = dict(self._held)
        for victim in self.candidates(job, most):
            if victim.reason == RECLAIMED:
                mine = self._tree.removal([(victim.job.queue, victim.charge)])
                mine = {name: after.get(name, Amounts()) + amount for name, amount in mine.items()}
                if not all(self._tree.keeps_guarantee(q, self._held, after | mine) for q in victim.borrowing):
                    continue  # a queue gives up borrowed capacity only
                after |= mine
            yield victim

    def choose(self, job: PendingJob, most: Amounts, sim: Simulation) -> list[Victim]:
        """The cheapest set of victims after which the job fits; empty if there is none."""
        stream = self._admissible(job, most)
        sequence: list[Victim] = []  # drawn from the stream as far as needed: usually a few
        start = sim.mark()
        marks = [start]  # marks[i]: the workspace with the first i victims released

        def probe(count: int) -> bool:
            if count < len(marks) - 1:
                sim.rollback(marks[count])
                del marks[count + 1 :]
            while len(marks) - 1 < count:
                sim.release(sequence[len(marks) - 1])
                marks.append(sim.mark())
            return self._valid(job, most, sequence[:count]) and sim.fits(sequence[:count])

        # Adding victims one at a time until the job fits finds the shortest fitting prefix; galloping
        # (1, 2, 4, ...) then halving finds the same one in log(n) placement trials.
        low, high = 0, 1
        while True:
            sequence.extend(itertools.islice(stream, high - len(sequence)))
            if len(sequence) < high:  # every candidate is in: the last try is all of them
                high = len(sequence)
                if high == low or not probe(high):
                    sim.rollback(start)
                    return []  # never a preemption that cannot lead to a placement
                break
            if probe(high):
                break
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            if probe(mid):
                high = mid
            else:
                low = mid
        sim.rollback(start)
        chosen = sequence[:high]
        for victim in reversed(sequence[:high]):  # most expensive first
            trial = [v for v in chosen if v is not victim]
            if trial and self._valid(job, most, trial) and self._fits(sim, trial):
                chosen = trial
        return chosen

    @staticmethod
    def _fits(sim: Simulation, victims: Sequence[Victim]) -> bool:
        mark = sim.mark()
        for victim in victims:
            sim.release(victim)
        ok = sim.fits(victims)
        sim.rollback(mark)
        return ok

    def _valid(self, job: PendingJob, most: Amounts, victims: Sequence[Victim]) -> bool:
        """Whether evicting ``victims`` for ``job`` keeps every rule (see the module docstring)."""
        tree = self._tree
        removed = tree.removal((v.job.queue, v.charge) for v in victims)
        entitled = tree.within_guarantee(job.queue, most, removed)
        if any(v.reason == RECLAIMED for v in victims) and not entitled:
            return False
        without = self._without(victims)
        # Victims that must stay borrowers if re-placed: this one's priority victims when the
        # preemptor borrows, and every such victim of the cycle so far whose queues this removal
        # touches. Equal (queue, charge) pairs need checking once.
        priority = [v for v in victims if v.reason == PREEMPTED and not v.overran]
        must = {(v.job.queue, v.charge) for v in priority if not entitled}
        must |= {key for key in self._must_borrow if not removed.keys().isdisjoint(tree.paths[key[0]])}
        return all(tree.over_guarantee(queue, without, charge) is not None for queue, charge in must)

    def evict(self, job: PendingJob, most: Amounts, chosen: Sequence[Victim], held: Amounts) -> None:
        """Record the evictions, uncharge the victims' queues and charge the room held for the preemptor."""
        removed = self._tree.removal((v.job.queue, v.charge) for v in chosen)
        entitled = self._tree.within_guarantee(job.queue, most, removed)
        for victim in chosen:
            self.evicted[victim.job.job_id] = victim
            if victim.reason == PREEMPTED and not entitled:
                self._must_borrow.add((victim.job.queue, victim.charge))
            self._tree.add(victim.job.queue, Amounts() - victim.charge)
        self._tree.add(job.queue, held)
        for name in self._tree.paths[job.queue]:
            self._held[name] = self._held.get(name, Amounts()) + held


def eviction_message(victim: Victim, job: PendingJob) -> str:
    """Why a victim is stopped, for its events."""
    if victim.overran and victim.job.backfill_until is not None:
        return (
            f"backfilled into room held for job '{job.name}' and still running past "
            f"{victim.job.backfill_until:%Y-%m-%d %H:%M:%S} UTC, when that job needs it"
        )
    if victim.reason == RECLAIMED:
        return (
            f"reclaimed for job '{job.name}' of queue '{job.queue}', which is owed its guaranteed quota; "
            f"queue '{victim.borrowing[-1]}' is above its own"
        )
    return f"preempted by job '{job.name}' (priority {job.priority} over {victim.job.priority})"


def preempting_message(chosen: Sequence[Victim]) -> str:
    """The pending reason of a job waiting for its victims to stop."""
    names = ", ".join(f"'{v.job.name}' ({v.reason})" for v in chosen)
    return f"evicting {plural(len(chosen), 'running job')} to make room: {names}; placed once they stop"
