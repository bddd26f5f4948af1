"""The Tessera scheduler: quotas, fair share, gangs and preemption in one cycle.

A cycle is numbered steps over an immutable snapshot (../shared/DESIGN.md):

1. Admit by queue quota: placing a job keeps its queue and every ancestor
   within guaranteed + borrowing limit, or it waits (``QuotaExceeded``).
2. Order: hierarchical DRF. At each level of the queue tree the child with the
   smallest weighted dominant share goes next (ties by name); within a queue,
   priority, then submit time, then id. Jobs whose placement keeps their queue
   within its guarantee are taken first, borrowers after: what a queue is owed
   comes before what it borrows, and preemption relies on it (see preempt.py).
   Usage grows as jobs are placed, so fairness holds within one cycle.
3. Allocate each gang all-or-nothing: ``gang_size`` tasks at least, as many as
   fit up to all of them; the bind lists the placed tasks.
4. Preempt or reclaim whole gangs for a job that does not fit: the cheapest
   set, never one that would not lead to a placement. The job is not bound in
   the same cycle; the room is held for it for the rest of the cycle.
5. Reserve for the head of each queue that still waits for capacity, and
   backfill into reservations only jobs that will be gone in time
   (backfill.py). Before any eviction a job tries to backfill; jobs that held
   a reservation last cycle go first, after preemptors.

6. Elastic jobs: before evicting anyone (step 4), a job that does not fit
   takes back other elastic jobs' extra slices (beyond their gang); after
   every pending job, running elastic jobs grow into what is still free, up
   to their max (elastic.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from tessera.api.jobs import PendingReason
from tessera.api.resources import Resources
from tessera.scheduler import elastic
from tessera.scheduler.backfill import RESERVED, Reservations, reserved_message
from tessera.scheduler.freeindex import EMPTY, LIVE, plural
from tessera.scheduler.model import (
    GANG_TOO_LARGE,
    NO_NODES,
    NO_NODES_MESSAGE,
    NO_READY_NODES,
    NO_READY_NODES_MESSAGE,
    UNSCHEDULABLE,
    Amounts,
    Bind,
    Decisions,
    Eviction,
    Grant,
    PendingJob,
    RunningJob,
    Shrink,
    SlicePlacement,
    Snapshot,
    TaskRequest,
)
from tessera.scheduler.placement import FIRST_FIT, Ranking, ShapeKey, Workspace, shape_key, shortage
from tessera.scheduler.preempt import (
    PREEMPTING,
    Victim,
    Victims,
    eviction_message,
    host_usage,
    preempting_message,
)
from tessera.scheduler.quota import QUOTA_EXCEEDED, FairOrder, QueueTree, Shape, gpu_charge, job_order
from tessera.scheduler.scoring import Scorer, running_specs, seed_tallies

_Signature = tuple[tuple[ShapeKey, ...], int]


@dataclass(slots=True)
class _Attempt:
    """A placement attempt: the placed tasks (left in the workspace) or why it failed (rolled back)."""

    placements: list[SlicePlacement]
    charge: Amounts
    why: str | None = None
    quota: bool = False


class TesseraScheduler:
    """Quota-, fairness- and preemption-aware gang scheduler (see the module docstring)."""

    name = "tessera"

    def __init__(self, *, backfill: bool = True) -> None:
        self.backfill = backfill  # reservations and backfill (step 5); off only in experiments

    def cycle(self, snapshot: Snapshot) -> Decisions:
        """Decide binds, evictions and a pending reason for every job not bound."""
        jobs = sorted(snapshot.pending, key=job_order)
        if not snapshot.nodes:
            return _all_waiting(jobs, NO_NODES, NO_NODES_MESSAGE)
        if not any(n.ready for n in snapshot.nodes):
            return _all_waiting(jobs, NO_READY_NODES, NO_READY_NODES_MESSAGE)
        return _Cycle(snapshot, backfill=self.backfill).run(jobs)


def _all_waiting(jobs: list[PendingJob], code: str, message: str) -> Decisions:
    reason = PendingReason(code=code, message=message)
    return Decisions(binds=(), pending={job.job_id: reason for job in jobs})


def _least(shapes: Sequence[Shape], gang: int) -> Amounts:
    """A lower bound on any gang's charge: per resource, the ``gang`` smallest tasks."""
    gpu = sum(sorted(s.charge_lb for s in shapes)[:gang])
    cpu = sum(sorted(s.cpu for s in shapes)[:gang])
    return Amounts(gpu, cpu, float(sum(sorted(s.memory for s in shapes)[:gang])))


class _Cycle:
    """The working state of one cycle."""

    def __init__(self, snapshot: Snapshot, *, backfill: bool) -> None:
        self._snapshot = snapshot
        self.live = Workspace(snapshot.nodes, empty=False, indexed=True)
        self._empty: Workspace | None = None  # built on the first job that needs it
        gpus = [g for n in snapshot.nodes for g in n.gpus]
        self._gpu_memory = {g.uuid: g.memory_mib for g in gpus}
        self._gpu_models = sorted({(g.model, g.memory_mib) for g in gpus if not g.mig_mode})
        ready = [n for n in snapshot.nodes if n.ready]
        totals = Amounts(
            float(sum(len(n.gpus) for n in ready)),
            sum(n.cpu for n in ready),
            float(sum(n.memory_mib for n in ready)),
        )
        running = sorted(snapshot.running, key=lambda j: j.job_id)
        names = {j.queue for j in snapshot.pending} | {j.queue for j in running}
        self.tree = QueueTree(snapshot.queues, names, totals)
        ready_names = {n.name for n in ready}
        self._victims = Victims(running, self.tree, self._gpu_memory, ready_names, snapshot.now)
        self._reservations = Reservations(self.live, running, ready_names, snapshot.now) if backfill else None
        for job in running:
            self.tree.add(job.queue, self._victims.charges[job.job_id])
        self._shapes: dict[ShapeKey, Shape] = {}
        self._never: dict[_Signature, str | None] = {}
        self._failed: dict[tuple[object, ...], str] = {}  # live attempts that failed, by state version
        self._hopeless: set[tuple[object, ...]] = set()  # jobs no eviction could help, by state
        self._hints: dict[tuple[object, ...], str] = {}  # _held_back, by state
        # Queues whose guarantee a preemptor holds room in this cycle, and for whom. Borrowers may not
        # take them past their guarantee until it binds, or next cycle the preemptor would borrow too,
        # lose its place before its victims and have its room taken back.
        self._owed_to: dict[str, str] = {}
        self._order = FairOrder(self.tree, ())
        self._placements = {q.name: q for q in snapshot.queues}
        self.binds: list[Bind] = []
        self.pending: dict[uuid.UUID, PendingReason] = {}
        self.evictions: list[Eviction] = []
        self._extras = elastic.extras(running, self._gpu_memory)
        self._shrunk: set[uuid.UUID] = set()  # elastic jobs that gave slices back this cycle
        self.grants: list[Grant] = []
        self.shrinks: list[Shrink] = []

    def run(self, jobs: Sequence[PendingJob]) -> Decisions:
        """Steps 1-4 over every pending job: what is owed first, then what is borrowed."""
        # jobs that evicted others last cycle go first: the room they freed is theirs, and
        # letting another queue take it would only make them evict again
        for claimant in sorted((j for j in jobs if j.preempting), key=job_order):
            self._schedule(claimant)
        # then jobs that held a reservation: the room their blockers freed is theirs (backfill.py)
        if self._reservations is not None:
            for holder in [j for j in jobs if j.reserved and not j.preempting]:
                self._schedule(holder)
            jobs = [j for j in jobs if not j.reserved]
        jobs = [j for j in jobs if not j.preempting]
        deferred = []
        self._order = FairOrder(self.tree, jobs)
        while (job := self._order.pop()) is not None:
            if self._entitled(job):
                self._schedule(job)
            else:
                deferred.append(job)
        self._order = FairOrder(self.tree, deferred)
        while (job := self._order.pop()) is not None:
            self._schedule(job)
        self._grow()
        return Decisions(
            binds=tuple(self.binds),
            pending=self.pending,
            evictions=tuple(self.evictions),
            grants=tuple(self.grants),
            shrinks=tuple(self.shrinks),
        )

    def _shape(self, res: Resources) -> Shape:
        key = shape_key(res)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape.of(res, self._gpu_models)
        return shape

    def _most(self, job: PendingJob) -> Amounts:
        """The largest charge the job can have: every task placed, each on its dearest GPU."""
        shapes = [self._shape(t.resources) for t in job.tasks]
        return Amounts(
            sum(s.charge_ub for s in shapes), sum(s.cpu for s in shapes), float(sum(s.memory for s in shapes))
        )

    def _entitled(self, job: PendingJob) -> bool:
        """Whether the queue path stays within its guarantee even with every task at its dearest."""
        return self.tree.within_guarantee(job.queue, self._most(job))

    def _wait(self, job: PendingJob, code: str, message: str) -> None:
        self.pending[job.job_id] = PendingReason(code=code, message=message)

    def _schedule(self, job: PendingJob) -> None:
        shapes = [self._shape(t.resources) for t in job.tasks]
        # min_available past the task count is a spec error; the whole gang is the most it can mean.
        gang = max(1, min(job.gang_size, len(job.tasks)))
        signature = (tuple(shape_key(t.resources) for t in job.tasks), gang)
        # A gang the emptied cluster cannot hold says so before anything else (it waits for nodes,
        # not quota), but that test is only run once the job has failed otherwise: most jobs fit.
        breach = self._breach(job.queue, _least(shapes, gang), None)
        if breach is not None:
            return self._wait(job, *self._unless_never(job, gang, signature, QUOTA_EXCEEDED, breach))

        key = (signature, job.data_nodes, self.live.version)
        failed = self._failed.get(key)
        attempt = (
            _Attempt([], Amounts(), failed) if failed is not None else self.attempt(job, shapes, gang, None)
        )
        if attempt.why is None:
            self.binds.append(Bind(job.job_id, tuple(attempt.placements)))
            self.live.commit()
            self._charge(job.queue, attempt.charge)
            return None
        code = QUOTA_EXCEEDED if attempt.quota else UNSCHEDULABLE
        code, why = self._unless_never(job, gang, signature, code, attempt.why)
        if job.data_nodes is not None and code == UNSCHEDULABLE:
            if job.selector:
                labels = ",".join(f"{k}={v}" for k, v in job.selector)
                where = ", ".join(sorted(job.data_nodes)) or "none"
                why += f"; its node selector {labels} (and any required data) allows only: {where}"
            else:
                where = ", ".join(sorted(job.data_nodes)) or "none yet (tessera data load NAME)"
                why += f"; it runs only on nodes holding all of its required data: {where}"
        if code == UNSCHEDULABLE:
            self._failed[key] = why
            if job.preempting:
                # its victims are still stopping (their slices drain until they exit): wait for
                # them rather than evict more
                return self._wait(job, PREEMPTING, "waiting for the jobs it evicted to stop")
            if (
                self._backfill(job, shapes, gang)
                or self._shrink(job, shapes, gang)
                or self._preempt(job, shapes, gang, signature)
            ):
                return None
            if self._reserve(job, shapes, gang, why):
                return None
            hint_key = (signature, job.data_nodes, self.live.version, job.expected_runtime_s is None)
            if hint_key not in self._hints:
                self._hints[hint_key] = self._held_back(job, shapes, gang)
            why += self._hints[hint_key]
        return self._wait(job, code, why)

    def _held_back(self, job: PendingJob, shapes: Sequence[Shape], gang: int) -> str:
        """Say so when room held for reservations is what keeps the job out."""
        reservations = self._reservations
        if reservations is None or not reservations.made:
            return ""
        ws = self.live
        mark = ws.mark()
        for reservation in reservations.made:
            ws.shift(reservation.held, -1)
        fits = self.attempt(job, shapes, gang, None).why is None
        ws.rollback(mark)
        if not fits:
            return ""
        holders = ", ".join(f"'{r.job.name}'" for r in reservations.made[:3])
        if job.expected_runtime_s is None:
            return (
                f"; it would fit in room held for {holders}, which only jobs with an expected runtime "
                f"that ends in time may use"
            )
        return f"; it would fit in room held for {holders}, but would not end before they need it"

    def _backfill(self, job: PendingJob, shapes: Sequence[Shape], gang: int) -> bool:
        """Place the job into held room it will have left before the holders need it (step 5)."""
        reservations = self._reservations
        if reservations is None or job.expected_runtime_s is None or not reservations.made:
            return False
        end = self._snapshot.now + timedelta(seconds=job.expected_runtime_s)
        lifted = reservations.liftable(end)
        if not lifted:
            return False
        ws = self.live
        mark = ws.mark()
        for reservation in lifted:
            ws.shift(reservation.held, -1)
        attempt = self.attempt(job, shapes, gang, None)
        if attempt.why is not None:
            ws.rollback(mark)
            return False
        for reservation in lifted:  # held again: the job and the holder overlap in space, not in time
            ws.shift(reservation.held, 1)
        ws.commit()
        shadows = [r.shadow for r in lifted if r.shadow is not None and r.overlaps(attempt.placements)]
        until = min(shadows, default=None)
        self.binds.append(Bind(job.job_id, tuple(attempt.placements), backfill_until=until))
        self._charge(job.queue, attempt.charge)
        return True

    def _reserve(self, job: PendingJob, shapes: Sequence[Shape], gang: int, why: str) -> bool:
        """Hold room for the first job of its queue that waits for capacity (step 5)."""
        reservations = self._reservations
        if reservations is None or job.queue in reservations.queues:
            return False
        charges = self._victims.charges

        def place(released: Sequence[RunningJob]) -> list[SlicePlacement] | None:
            removed = self.tree.removal((j.queue, charges[j.job_id]) for j in released)
            attempt = self.attempt(job, shapes, gang, removed)
            return attempt.placements if attempt.why is None else None

        reservation = reservations.reserve(job, place, self._victims.evicted)
        if reservation is None:
            return False
        self._wait(job, RESERVED, reserved_message(why, reservation, self._snapshot.now))
        return True

    def _unless_never(
        self, job: PendingJob, gang: int, signature: _Signature, code: str, message: str
    ) -> tuple[str, str]:
        never = self._never_fits(job, gang, signature)
        return (code, message) if never is None else (GANG_TOO_LARGE, never)

    def _breach(self, queue: str, charge: Amounts, removed: dict[str, Amounts] | None) -> str | None:
        """Why ``charge`` may not be added to the queue: a borrowing limit, or a guarantee being won back."""
        message = self.tree.limit_breach(queue, charge, removed)
        if message is not None:
            return message
        for name in self.tree.paths[queue]:
            holder = self._owed_to.get(name)
            if holder is not None and self.tree.borrows(name, removed or {}, charge):
                return (
                    f"queue '{name}' is winning back its guaranteed quota for job '{holder}': "
                    f"no borrowing from it until that job is placed"
                )
        return None

    def _charge(self, queue: str, amounts: Amounts) -> None:
        self.tree.add(queue, amounts)
        self._order.usage_changed(queue)

    def attempt(
        self, job: PendingJob, shapes: Sequence[Shape], gang: int, removed: dict[str, Amounts] | None
    ) -> _Attempt:
        """Place ``gang`` to all of the job's tasks, within quota (``removed``: usage of victims).

        On success the placements stay in the live workspace; on failure it is as before.
        """
        ws, tasks = self.live, job.tasks
        index = ws.index
        assert index is not None  # the live workspace is built indexed
        total = len(tasks)
        elastic = gang < total
        # Necessary conditions first (O(log nodes) each), so most hopeless jobs never scan the nodes.
        shortages = [index.task_shortage(t, s) for t, s in zip(tasks, shapes, strict=True)]
        maybe = [i for i, why in enumerate(shortages) if why is None]
        if len(maybe) < gang:
            first = next(why for why in shortages if why is not None)
            return self._failure(first, gang, total, f"at most {len(maybe)}" if elastic else None)
        gang_why = index.gang_shortage([shapes[i] for i in maybe], gang)
        if gang_why is not None:
            return self._failure(gang_why, gang, total, None)

        rank = self._rank(job)
        start = ws.mark()
        cursors: dict[ShapeKey, int] = {}
        placed: list[tuple[TaskRequest, list[SlicePlacement], int]] = []
        first_failed: TaskRequest | None = None
        for n, i in enumerate(maybe):
            if len(placed) + len(maybe) - n < gang:
                break  # too many have failed for the rest to make up the gang
            mark = ws.mark()
            placements = ws.place_task(tasks[i], cursors, rank)
            if placements is not None:
                placed.append((tasks[i], placements, mark))
                continue
            if not elastic:
                why = shortage(ws, tasks[i], len(placed), LIVE)
                ws.rollback(start)
                return self._failure(why, gang, total, None)
            first_failed = first_failed or tasks[i]
        if len(placed) < gang:
            why = shortage(ws, first_failed or tasks[0], 0, LIVE)
            ws.rollback(start)
            return self._failure(why, gang, total, str(len(placed)))

        charges = [
            Amounts(gpu_charge(p, self._gpu_memory), t.resources.cpu, float(t.resources.memory))
            for t, p, _ in placed
        ]
        prefix = [Amounts()]
        for charge in charges:
            prefix.append(prefix[-1] + charge)
        keep = len(placed)
        while keep >= gang and self._breach(job.queue, prefix[keep], removed) is not None:
            keep -= 1
        if keep < gang:
            why = self._breach(job.queue, prefix[gang], removed) or ""
            ws.rollback(start)
            return _Attempt([], Amounts(), why, quota=True)
        if keep < len(placed):
            ws.rollback(placed[keep][2])  # the later tasks would pass the borrowing limit
        return _Attempt([p for _, ps, _ in placed[:keep] for p in ps], prefix[keep])

    def _shrink(self, job: PendingJob, shapes: Sequence[Shape], gang: int) -> bool:
        """Step 6, first half: take back the fewest extra elastic slices that let the job fit.

        Extras of the job's own queue, or of queues above their guarantee, may be taken by anyone;
        those of a queue within its guarantee only by a job whose queue is owed its own.
        """
        entitled = self._entitled(job)
        candidates = [
            e
            for e in self._extras
            if e.job.job_id != job.job_id
            and e.job.job_id not in self._shrunk
            and e.job.job_id not in self._victims.evicted
            and (entitled or e.job.queue == job.queue or self.tree.borrows(e.job.queue, {}))
        ]
        if not candidates:
            return False
        ws = self.live
        mark = ws.mark()

        def fits(taken: Sequence[elastic.Extra]) -> bool:
            ws.rollback(mark)
            for extra in taken:
                ws.release(extra.placements, extra.host)
            removed = self.tree.removal((e.job.queue, e.charge) for e in taken)
            trial = ws.mark()
            ok = self.attempt(job, shapes, gang, removed).why is None
            ws.rollback(trial)
            return ok

        if not fits(candidates):  # not even all of them would do: take none
            ws.rollback(mark)
            return False
        taken = next(candidates[:n] for n in range(1, len(candidates) + 1) if fits(candidates[:n]))
        for extra in reversed(taken[:-1]):  # then drop any it fits without
            if fits([e for e in taken if e is not extra]):
                taken = [e for e in taken if e is not extra]
        fits(taken)  # the workspace with exactly these released
        attempt = self.attempt(job, shapes, gang, self.tree.removal((e.job.queue, e.charge) for e in taken))
        assert attempt.why is None, "the extras taken were just shown to make room"
        ws.hold_since(mark)  # held until the extras' processes have stopped
        ws.commit()
        for extra in taken:
            self.tree.add(extra.job.queue, Amounts() - extra.charge)
            self._order.usage_changed(extra.job.queue)
        self._charge(job.queue, attempt.charge)
        message = elastic.shrink_message(taken, job.name)
        for running, task_ids in elastic.by_job(taken):
            self._shrunk.add(running.job_id)
            self._victims.frozen.add(running.job_id)
            self.shrinks.append(Shrink(running.job_id, running.version, task_ids, job.job_id, message))
        names = ", ".join(sorted({f"'{e.job.name}'" for e in taken}))
        count = plural(len(taken), "slice")
        self._wait(job, PREEMPTING, f"waiting for elastic job(s) {names} to give back {count}")
        return True

    def _grow(self) -> None:
        """Step 6, second half: running elastic jobs take free room, task by task, up to their max.

        Not while a job waits for room being freed for it (``Preempting``): the room its victims or
        the extras it took back free must reach it, not go straight back to an elastic job.
        """
        if any(j.preempting for j in self._snapshot.pending) or self.evictions or self.shrinks:
            return
        ws = self.live
        for running in elastic.growable(list(self._snapshot.running)):
            if running.job_id in self._shrunk or running.job_id in self._victims.evicted:
                continue
            assert running.elastic is not None
            rank = self._rank(running)
            cursors: dict[ShapeKey, int] = {}
            placed: list[SlicePlacement] = []
            for task in running.elastic.growable:
                mark = ws.mark()
                placements = ws.place_task(task, cursors, rank)
                if placements is None:
                    break
                charge = Amounts(
                    gpu_charge(placements, self._gpu_memory), task.resources.cpu, float(task.resources.memory)
                )
                if self._breach(running.queue, charge, None) is not None:
                    ws.rollback(mark)
                    break
                ws.commit()
                self._charge(running.queue, charge)
                placed += placements
            if placed:
                self.grants.append(Grant(running.job_id, running.version, tuple(placed)))

    def _rank(self, job: PendingJob | RunningJob) -> Ranking | None:
        """The job's placement policy (its queue's, an ancestor's, or the cluster's) and locality."""
        name = self._snapshot.placement
        queue = self._placements.get(job.queue)
        while queue is not None:
            if queue.placement is not None:
                name = queue.placement
                break
            queue = self._placements.get(queue.parent) if queue.parent else None
        only = job.data_nodes if isinstance(job, PendingJob) else None
        if name == FIRST_FIT:
            return None if only is None else Ranking(FIRST_FIT, None, only)
        if self.live.scorer is None:
            self.live.scorer = self._scorer()
        return Ranking(name, dict(job.locality) if job.locality else None, only)

    def _scorer(self) -> Scorer:
        scorer = Scorer(self.live.ready_nodes)
        specs = [
            (scorer.spec(t.resources), t.resources.memory) for j in self._snapshot.pending for t in j.tasks
        ]
        specs += [s for j in self._snapshot.running for s in running_specs(j, self._gpu_memory)]
        scorer.learn(specs)
        seed_tallies(self.live.ready_nodes, self._snapshot.running)
        return scorer

    @staticmethod
    def _failure(detail: str, gang: int, total: int, fit_now: str | None) -> _Attempt:
        if gang < total and fit_now is not None:
            detail = f"gang needs {gang} of its {total} tasks placed together, {fit_now} fit now: {detail}"
        return _Attempt([], Amounts(), f"waiting for capacity: {detail}")

    def _never_fits(self, job: PendingJob, gang: int, signature: _Signature) -> str | None:
        """GangTooLarge message if the whole cluster, emptied, could not hold the gang; else None."""
        if signature in self._never:
            return self._never[signature]
        if self._empty is None:
            self._empty = Workspace(self._snapshot.nodes, empty=True)
        ws, tasks = self._empty, job.tasks
        start, placed = ws.mark(), 0
        cursors: dict[ShapeKey, int] = {}
        why: str | None = None
        for i, task in enumerate(tasks):
            if placed + len(tasks) - i < gang:
                break
            if ws.place_task(task, cursors) is not None:
                placed += 1
            elif why is None:
                # First fit on the emptied cluster is a sufficient, not exact, test of "never fits":
                # a smarter packing might fit a mix of slices it refuses. It errs towards waiting.
                why = shortage(ws, task, placed if gang == len(tasks) else 0, EMPTY)
                if gang == len(tasks):
                    break
        size = plural(len(tasks), "task") if gang == len(tasks) else f"at least {gang} of {len(tasks)} tasks"
        message = (
            None if placed >= gang else f"gang of {size} needs more than the whole cluster offers: {why}"
        )
        ws.rollback(start)
        self._never[signature] = message
        return message

    def _preempt(self, job: PendingJob, shapes: Sequence[Shape], gang: int, signature: _Signature) -> bool:
        """Step 4: evict the cheapest set of victims that makes room; False if none can."""
        key = (
            signature,
            job.data_nodes,
            job.queue,
            job.priority,
            self.live.version,
            len(self._victims.evicted),
        )
        if key in self._hopeless:
            return False
        trial = _Trial(self, job, shapes, gang)
        most = self._most(job)
        chosen = self._victims.choose(job, most, trial)
        if not chosen:
            self._hopeless.add(key)
            return False
        ws = self.live
        mark = ws.mark()
        for victim in chosen:
            trial.release(victim)
        attempt = self.attempt(job, shapes, gang, self.tree.removal((v.job.queue, v.charge) for v in chosen))
        assert attempt.why is None, "the chosen victims were just shown to make room"
        ws.hold_since(mark)
        ws.commit()
        self._victims.evict(job, most, chosen, attempt.charge)  # held: later jobs of its queue see it
        if self.tree.within_guarantee(job.queue, Amounts()):
            for name in self.tree.paths[job.queue]:
                self._owed_to.setdefault(name, job.name)
        for victim in chosen:
            self._order.usage_changed(victim.job.queue)
            self.evictions.append(
                Eviction(victim.job.job_id, job.job_id, victim.reason, eviction_message(victim, job))
            )
        self._order.usage_changed(job.queue)
        self._wait(job, PREEMPTING, preempting_message(chosen))
        return True


class _Trial:
    """Victim removal for one pending job, simulated on the live workspace (see preempt.Simulation)."""

    def __init__(self, cycle: _Cycle, job: PendingJob, shapes: Sequence[Shape], gang: int) -> None:
        self._cycle, self._job, self._shapes, self._gang = cycle, job, shapes, gang
        self._ws = cycle.live

    def mark(self) -> int:
        return self._ws.mark()

    def rollback(self, mark: int) -> None:
        self._ws.rollback(mark)

    def release(self, victim: Victim) -> None:
        self._ws.release(victim.job.placements, host_usage(victim.job))

    def fits(self, victims: Sequence[Victim]) -> bool:
        removed = self._cycle.tree.removal((v.job.queue, v.charge) for v in victims)
        mark = self._ws.mark()
        ok = self._cycle.attempt(self._job, self._shapes, self._gang, removed).why is None
        self._ws.rollback(mark)
        return ok
