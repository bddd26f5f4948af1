"""Live jobs past their deadline fail with DeadlineExceeded.

(Pending reasons themselves come from the scheduling loop, every cycle.)
"""

from __future__ import annotations

from datetime import datetime

from tessera.api.jobs import JobSpec, JobState, TerminalReason
from tessera.platform.controllers.jobindex import JobIndex
from tessera.platform.services.jobs import apply_transition
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow
from tessera.platform.store.types import utcnow


def reconcile_pending(db: Database, now: datetime | None = None, index: JobIndex | None = None) -> int:
    """One pass; returns how many jobs it failed. Opens no write transaction when none is due.

    ``index`` is the term's job index (kept from the change feed); without one, a fresh one
    lists the live jobs."""
    now = now or utcnow()
    index = index or JobIndex(db)
    index.sync()
    expired = index.due(now)
    if not expired:
        return 0
    changed = 0
    with db.write() as tx:
        for job_id, _at in expired:
            row = tx.session.get(JobRow, job_id)
            if row is None or JobState(row.state).terminal:
                continue
            deadline = JobSpec.model_validate(row.spec).deadline
            apply_transition(
                tx,
                row,
                JobState.FAILED,
                reason=TerminalReason.DEADLINE_EXCEEDED,
                message=f"not finished within its deadline of {deadline}",
            )
            changed += 1
    return changed
