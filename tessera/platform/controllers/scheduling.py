"""The scheduling loop: an in-memory view kept current from the change feed (view.py),
a scheduler cycle over its snapshot, then conditional binds and pending reasons.

The view is never re-read in full per cycle: after one initial list it is updated
from the change log (``job``, ``node`` and ``queue`` changes), and re-listed only
when the log was compacted past it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tessera.api.events import Change
from tessera.api.jobs import Job, JobState, JobStatus, PendingReason
from tessera.platform.controllers.view import ClusterView, load_view
from tessera.platform.metrics import SchedulerMetrics, scheduler_metrics
from tessera.platform.services.common import put
from tessera.platform.services.elastic import grant_slices, shrink_job
from tessera.platform.services.execution import bind_job, evict_job
from tessera.platform.services.jobs import render_job
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.feed import Compacted, catch_up
from tessera.platform.store.rows import JobRow
from tessera.platform.store.types import utcnow
from tessera.scheduler import model
from tessera.scheduler.preempt import PREEMPTING
from tessera.scheduler.registry import make

log = logging.getLogger(__name__)
KINDS = ("job", "node", "queue", "dataset")


def _both_preempting(old: PendingReason | None, new: PendingReason) -> bool:
    # keep the first Preempting reason (it names the victims and dates the claim)
    return old is not None and old.code == new.code == PREEMPTING


class SchedulingLoop:
    """One scheduler, one view; ``step()`` is one cycle (the leader calls it periodically).

    A cycle's cost grows with the pending jobs; ``max_busy`` caps the share of wall time cycles
    take (a cycle of t seconds is followed by t * (1 / max_busy - 1) of rest), so under a deep
    backlog the scheduler slows down rather than the API it shares the interpreter with."""

    def __init__(
        self,
        db: Database,
        scheduler: model.Scheduler | None = None,
        placement: str = "tessera",
        metrics: SchedulerMetrics | None = None,
        max_busy: float = 1.0,
    ) -> None:
        self.db = db
        self.max_busy = max_busy  # the share of wall time cycles may take (1: back to back)
        self._rest_until = 0.0  # perf_counter time before which no cycle starts
        self.metrics = metrics or scheduler_metrics()  # without one, recorded where nobody looks
        self.scheduler = scheduler or make("tessera")
        self.placement = placement  # the cluster's placement policy
        self.view = ClusterView(placement=placement)
        self._dirty = True
        self._wake_at: datetime | None = None  # a time-driven decision is due then (a backfill's end)

    def sync(self) -> None:
        """Bring the view up to date: a full list once, then the change feed."""
        if self.view.revision < 0:
            self._relist()
            return
        try:
            self.view.revision = catch_up(self.db, self.view.revision, KINDS, self._fold)
        except Compacted:
            self._relist()

    def _fold(self, change: Change) -> None:
        if self.view.apply(change):  # a change that leaves the scheduler's input as it was: no cycle
            self._dirty = True

    def _relist(self) -> None:
        self.view, self._dirty = load_view(self.db, self.placement), True

    def step(self, now: datetime | None = None) -> model.Decisions | None:
        """Sync, and run a cycle if anything changed since the last one."""
        try:
            return self._step(now)
        except Exception:
            self.metrics.failed_cycles.inc()
            raise

    def _step(self, now: datetime | None) -> model.Decisions | None:
        start = time.perf_counter()
        self.sync()
        now = now or utcnow()
        if not self._dirty and (self._wake_at is None or now < self._wake_at):
            return None
        if start < self._rest_until:  # resting after a long cycle: what changed waits for the next
            return None
        snapshot = self.view.snapshot(now)
        decided = time.perf_counter()
        decisions = self.scheduler.cycle(snapshot)
        self.metrics.decide.observe(time.perf_counter() - decided)
        self.metrics.pending(snapshot.pending)
        self._apply(decisions)
        self._dirty = bool(decisions.binds or decisions.grants or decisions.shrinks)  # look again next time
        # nothing in the store changes when a backfill runs past its time, but a holder may then evict it
        ends = [j.backfill_until for j in snapshot.running if j.backfill_until and j.backfill_until > now]
        # nor when a preemptor's claim on the room it freed runs out
        self._wake_at = min([*ends, *self.view.claims], default=None)
        self.metrics.cycles.inc()
        took = time.perf_counter() - start
        self.metrics.cycle.observe(took)
        self._rest_until = start + took / self.max_busy
        self.metrics.last_cycle.set_to_current_time()
        return decisions

    def _apply(self, decisions: model.Decisions) -> None:
        for eviction in decisions.evictions:
            job = self.view.jobs.get(eviction.job_id)
            if job is None:
                continue
            try:
                with self.db.write() as tx:
                    evicted = evict_job(tx, eviction.job_id, job.version, eviction.reason, eviction.message)
                if evicted:
                    self.metrics.evictions.inc()
            except Exception:
                log.exception("eviction of job %s failed", eviction.job_id)
            self._dirty = True
        if decisions.binds:
            self._bind(decisions.binds)
        for shrink in decisions.shrinks:
            self._resize(shrink_job, shrink)
        for grant in decisions.grants:
            self._resize(grant_slices, grant)
        stale = {
            job_id: reason
            for job_id, reason in decisions.pending.items()
            if (job := self.view.jobs.get(job_id)) is not None
            and job.status.pending_reason != reason
            and not _both_preempting(job.status.pending_reason, reason)
        }
        if stale:
            self._write_reasons(stale)

    def _resize(self, apply: Callable[[Tx, Any], bool], decision: model.Grant | model.Shrink) -> None:
        try:
            with self.db.write() as tx:
                done = apply(tx, decision)
        except Exception:
            log.exception("resizing job %s failed", decision.job_id)
            done = False
        if not done:
            log.info("resizing job %s refused: it changed since the snapshot", decision.job_id)
        self._dirty = True  # applied or refused, the next cycle looks again

    def _bind(self, binds: tuple[model.Bind, ...]) -> None:
        """All of a cycle's binds in one transaction (one revision), each in its own savepoint,
        so one refused bind never undoes the others."""
        bound_jobs: list[Job] = []
        with self.db.write() as tx:
            for bind in binds:
                job = self.view.jobs.get(bind.job_id)
                if job is None:
                    continue
                try:
                    with tx.savepoint():  # its change rendered inside: one bad job undoes one bind
                        bound = bind_job(tx, bind.job_id, job.version, bind)
                except Exception:
                    log.exception("bind of job %s failed", bind.job_id)
                    self.metrics.failed_binds.labels("error").inc()
                    self._dirty = True
                    continue
                if bound:
                    bound_jobs.append(job)
                else:
                    self.metrics.failed_binds.labels("conflict").inc()
                    self._dirty = True
        # counted once committed; a requeued attempt's wait would include its earlier run
        now = utcnow()
        for job in bound_jobs:
            self.metrics.binds.inc()
            if job.status.attempt == 0:
                wait = (now - job.status.submitted_at).total_seconds()
                self.metrics.time_to_admit.labels(job.queue).observe(max(wait, 0.0))

    def _write_reasons(self, reasons: dict[uuid.UUID, PendingReason]) -> None:
        with self.db.write() as tx:
            for job_id, reason in reasons.items():
                row = tx.session.get(JobRow, job_id)
                if row is None or row.state != JobState.PENDING.value:
                    continue
                status = JobStatus.model_validate(row.status)
                if status.pending_reason == reason:
                    continue
                row.status = status.model_copy(update={"pending_reason": reason}).model_dump(mode="json")
                put(tx, "job", row, lambda r: render_job(tx.session, r))
