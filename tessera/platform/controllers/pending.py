"""Pending jobs past their deadline fail with DeadlineExceeded.

(Pending reasons themselves come from the scheduling loop, every cycle.)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from tessera.api.jobs import JobSpec, JobState, JobStatus, TerminalReason
from tessera.platform.services.jobs import apply_transition
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow
from tessera.platform.store.types import utcnow


def reconcile_pending(db: Database, now: datetime | None = None) -> int:
    """One pass; returns how many jobs it failed. Opens no write transaction when idle."""
    now = now or utcnow()
    with db.read() as session:
        rows = session.execute(
            select(JobRow.id, JobRow.spec, JobRow.status).where(JobRow.live_name.is_not(None))
        ).all()
    expired = []
    for job_id, spec_doc, status_doc in rows:
        deadline = JobSpec.model_validate(spec_doc).deadline
        submitted = JobStatus.model_validate(status_doc).submitted_at
        if deadline is not None and submitted + deadline <= now:
            expired.append((job_id, deadline))
    if not expired:
        return 0
    changed = 0
    with db.write() as tx:
        for job_id, deadline in expired:
            row = tx.session.get(JobRow, job_id)
            if row is not None and not JobState(row.state).terminal:
                apply_transition(
                    tx,
                    row,
                    JobState.FAILED,
                    reason=TerminalReason.DEADLINE_EXCEEDED,
                    message=f"not finished within its deadline of {deadline}",
                )
                changed += 1
    return changed
