"""Reading and compacting the change log (the change feed).

Like etcd, the log keeps recent history only: :func:`compact` drops entries at
or below a revision, and a watcher asking for changes from before the
compacted revision is told to re-list (:class:`Compacted`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tessera.api.events import Change
from tessera.platform.store.db import Database
from tessera.platform.store.rows import ChangeRow, RevisionRow


class Compacted(Exception):
    """The requested revision has been compacted away; re-list and watch from now."""

    def __init__(self, requested: int, compacted: int) -> None:
        self.requested = requested
        self.compacted = compacted
        super().__init__(
            f"revision {requested} has been compacted (history starts after {compacted}); "
            "list again and watch from the list's revision"
        )


def changes_after(
    session: Session,
    after: int,
    *,
    kinds: Sequence[str] = (),
    node: str | None = None,
    limit: int = 500,
) -> tuple[list[Change], int]:
    """Changes with revision > ``after`` (oldest first) and the revision to resume from.

    With ``node``, a job's change is kept only if its tasks were or are on that node (the
    change's node tag); changes without a tag (other kinds, or logged before jobs had one) pass.
    Raises :class:`Compacted` when ``after`` predates the retained history.
    """
    head = session.execute(select(RevisionRow).where(RevisionRow.id == 1)).scalar_one()
    if after < head.compacted:
        raise Compacted(after, head.compacted)
    query = select(ChangeRow).where(ChangeRow.revision > after)
    if kinds:
        query = query.where(ChangeRow.kind.in_(list(kinds)))
    if node is not None:
        query = query.where(
            ChangeRow.nodes.is_(None) | ChangeRow.nodes.contains(f",{node},", autoescape=True)
        )
    rows = list(session.execute(query.order_by(ChangeRow.revision, ChangeRow.seq).limit(limit)).scalars())
    resume = head.revision
    if len(rows) == limit:
        # never split one revision across pages: finish the last one
        last = rows[-1]
        rows.extend(
            session.execute(
                query.where(ChangeRow.revision == last.revision, ChangeRow.seq > last.seq).order_by(
                    ChangeRow.seq
                )
            ).scalars()
        )
        resume = last.revision
    elif rows:
        resume = max(resume, rows[-1].revision)
    # a compaction committed between the reads above could have removed rows we should
    # have returned (each statement sees its own snapshot on PostgreSQL): check again
    compacted = session.execute(select(RevisionRow.compacted).where(RevisionRow.id == 1)).scalar_one()
    if after < compacted:
        raise Compacted(after, compacted)
    changes = [
        Change(revision=r.revision, kind=r.kind, id=r.entity_id, op=r.op, object=r.object) for r in rows
    ]
    return changes, resume


def catch_up(db: Database, after: int, kinds: Sequence[str], apply: Callable[[Change], object]) -> int:
    """Hand every change after ``after`` to ``apply``, oldest first, page by page until none is
    left; returns the revision reached. Raises :class:`Compacted` (the caller lists again)."""
    while True:
        with db.read() as session:
            changes, resume = changes_after(session, after, kinds=kinds)
        for change in changes:
            apply(change)
        after = resume
        if not changes:
            return after


def compact(session: Session, keep_after: int) -> int:
    """Drop change-log entries at or below ``keep_after``; returns how many."""
    result = session.execute(delete(ChangeRow).where(ChangeRow.revision <= keep_after))
    session.execute(
        update(RevisionRow)
        .where(RevisionRow.id == 1, RevisionRow.compacted < keep_after)
        .values(compacted=keep_after)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
