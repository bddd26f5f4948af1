"""Pending jobs: refresh their reason, and fail those past their deadline."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from tessera.api.jobs import JobSpec, JobState, JobStatus, PendingReason, TerminalReason
from tessera.jobs import pending
from tessera.platform.services.common import put
from tessera.platform.services.jobs import apply_transition, render_job
from tessera.platform.services.nodes import node_count
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow
from tessera.platform.store.types import utcnow


def reconcile_pending(db: Database, now: datetime | None = None) -> int:
    """One pass; returns how many jobs it changed. Writes only what differs."""
    now = now or utcnow()
    with db.read() as session:
        rows = session.execute(
            select(JobRow.id, JobRow.spec, JobRow.status).where(JobRow.state == JobState.PENDING.value)
        ).all()
    if not rows:
        return 0
    with db.read() as session:
        reason = pending.WAITING_FOR_SCHEDULER if node_count(session) else pending.NO_NODES
    expired, stale = [], []
    for job_id, spec_doc, status_doc in rows:
        status = JobStatus.model_validate(status_doc)
        deadline = JobSpec.model_validate(spec_doc).deadline
        if _past(status.submitted_at, deadline, now):
            expired.append((job_id, deadline))
        elif _stale(status.pending_reason, reason):
            stale.append(job_id)
    if not expired and not stale:
        return 0  # no write transaction, so no revision is spent on a no-op
    changed = 0
    with db.write() as tx:
        for job_id, deadline in expired:
            row = tx.session.get(JobRow, job_id)
            if row is not None and row.state == JobState.PENDING.value:
                apply_transition(
                    tx,
                    row,
                    JobState.FAILED,
                    reason=TerminalReason.DEADLINE_EXCEEDED,
                    message=f"not finished within its deadline of {deadline}",
                )
                changed += 1
        for job_id in stale:
            row = tx.session.get(JobRow, job_id)
            if row is None or row.state != JobState.PENDING.value:
                continue
            status = JobStatus.model_validate(row.status)
            row.status = status.model_copy(update={"pending_reason": reason}).model_dump(mode="json")
            put(tx, "job", row, lambda r: render_job(tx.session, r))
            changed += 1
    return changed


def _past(submitted: datetime, deadline: timedelta | None, now: datetime) -> bool:
    return deadline is not None and submitted + deadline <= now


def _stale(current: PendingReason | None, wanted: PendingReason) -> bool:
    # only the reasons this controller owns are refreshed; a scheduler's reason stays
    owned = {pending.NO_NODES.code, pending.WAITING_FOR_SCHEDULER.code, "Requeued"}
    return current is None or (current.code in owned and current != wanted)
