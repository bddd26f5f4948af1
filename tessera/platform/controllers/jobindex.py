"""Live jobs' deadlines and the datasets pending jobs require, kept from the change feed.

The deadline and prewarm controllers used to read and parse every live job on each pass, so
their cost grew with the backlog (a quarter of the server's CPU at 12,000 pending jobs). This
index lists the live jobs once per leader term, then folds in the ``job`` changes of the feed:
a pass costs what changed since the last one, plus the deadlines that are due.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select

from tessera.api.common import Duration
from tessera.api.events import Change
from tessera.api.jobs import JobState
from tessera.platform.store.db import Database
from tessera.platform.store.feed import Compacted, catch_up
from tessera.platform.store.rows import JobRow, RevisionRow

_DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)
_INSTANT: TypeAdapter[datetime] = TypeAdapter(datetime)


def required_datasets(spec: dict[str, Any]) -> frozenset[uuid.UUID]:
    """The datasets a job's spec (stored or rendered) mounts with ``locality: required``."""
    return frozenset(
        uuid.UUID(str(mount["dataset_id"]))
        for mount in spec.get("data") or []
        if mount.get("locality") == "required" and mount.get("dataset_id")
    )


def deadline_at(spec: dict[str, Any], status: dict[str, Any]) -> datetime | None:
    """When a job's deadline passes: submitted at + ``spec.deadline``; None without one."""
    if spec.get("deadline") is None or status.get("submitted_at") is None:
        return None
    return _INSTANT.validate_python(status["submitted_at"]) + _DURATION.validate_python(spec["deadline"])


class JobIndex:
    """Deadlines of live jobs (a heap) and a count of pending jobs per required dataset."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.revision = -1
        self._deadlines: dict[uuid.UUID, datetime] = {}
        self._heap: list[tuple[datetime, uuid.UUID]] = []  # stale entries are skipped when popped
        self._needs: dict[uuid.UUID, frozenset[uuid.UUID]] = {}  # pending job -> datasets it requires
        self._wanted: Counter[uuid.UUID] = Counter()

    def sync(self) -> None:
        """Catch up with the store: one full list the first time (or after compaction), then the feed."""
        if self.revision < 0:
            self._relist()
            return
        try:
            self.revision = catch_up(self.db, self.revision, ("job",), self._apply)
        except Compacted:
            self._relist()

    def due(self, now: datetime) -> list[tuple[uuid.UUID, datetime]]:
        """Live jobs whose deadline is at or before ``now`` (they stay indexed until they end)."""
        found: dict[uuid.UUID, datetime] = {}
        while self._heap and self._heap[0][0] <= now:
            at, job_id = heapq.heappop(self._heap)
            if self._deadlines.get(job_id) == at:
                found[job_id] = at
        for job_id, at in found.items():  # kept until the job's end arrives, so a refused write retries
            heapq.heappush(self._heap, (at, job_id))
        return list(found.items())

    def wanted(self) -> set[uuid.UUID]:
        """Datasets at least one pending job requires."""
        return set(self._wanted)

    def _relist(self) -> None:
        self._deadlines.clear()
        self._heap.clear()
        self._needs.clear()
        self._wanted.clear()
        with self.db.read() as session:
            revision = session.execute(select(RevisionRow.revision)).scalar_one()
            live = select(JobRow.id, JobRow.state, JobRow.spec, JobRow.status)
            live = live.where(JobRow.live_name.is_not(None))
            rows = session.execute(live).all()
        for job_id, state, spec, status in rows:
            self._put(job_id, JobState(state), spec, status)
        self.revision = revision

    def _apply(self, change: Change) -> None:
        if change.op == "delete" or change.object is None:
            self._drop(change.id)
            return
        doc = change.object
        self._put(change.id, JobState(doc["status"]["state"]), doc["spec"], doc["status"])

    def _put(self, job_id: uuid.UUID, state: JobState, spec: dict[str, Any], status: dict[str, Any]) -> None:
        before = self._deadlines.get(job_id)
        self._drop(job_id)
        if state.terminal:
            return
        at = deadline_at(spec, status)
        if at is not None:
            self._deadlines[job_id] = at
            if at != before:  # the same deadline is in the heap already
                heapq.heappush(self._heap, (at, job_id))
            if len(self._heap) > 2 * len(self._deadlines) + 64:  # drop the entries of ended jobs
                self._heap = [(t, j) for t, j in self._heap if self._deadlines.get(j) == t]
                heapq.heapify(self._heap)
        if state is JobState.PENDING:
            needs = required_datasets(spec)
            if needs:
                self._needs[job_id] = needs
                self._wanted.update(needs)

    def _drop(self, job_id: uuid.UUID) -> None:
        self._deadlines.pop(job_id, None)
        needs = self._needs.pop(job_id, None)
        if needs:
            self._wanted.subtract(needs)
            for dataset_id in needs:
                if self._wanted[dataset_id] <= 0:
                    del self._wanted[dataset_id]
