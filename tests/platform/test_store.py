"""The store on SQLite and PostgreSQL: revisions, change log, conditional writes, live names."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from tessera.platform.store.db import Database
from tessera.platform.store.feed import Compacted, changes_after, compact
from tessera.platform.store.rows import JobRow, ProjectRow, QueueRow, RevisionRow, UserRow


def _queue(db: Database, name: str) -> uuid.UUID:
    with db.write() as tx:
        row = QueueRow(name=name, spec={})
        tx.stamp(row)
        tx.session.add(row)
        tx.session.flush()
        tx.record("queue", row.id, "put", {"name": name})
        return row.id


def test_every_write_transaction_takes_the_next_revision(db: Database) -> None:
    start = db.current_revision()
    ids = [_queue(db, f"q{i}") for i in range(3)]
    assert db.current_revision() == start + 3
    with db.read() as session:
        changes, resume = changes_after(session, start)
        rows = [session.get(QueueRow, i) for i in ids]
        revisions = [row.revision for row in rows if row is not None]
    assert [c.revision for c in changes] == [start + 1, start + 2, start + 3]
    assert revisions == [start + 1, start + 2, start + 3]
    assert [c.object for c in changes] == [{"name": "q0"}, {"name": "q1"}, {"name": "q2"}]
    assert resume == start + 3


def test_a_failed_transaction_leaves_no_revision_and_no_change(db: Database) -> None:
    start = db.current_revision()
    with pytest.raises(RuntimeError), db.write() as tx:
        tx.record("queue", uuid.uuid4(), "put", None)
        raise RuntimeError("boom")
    assert db.current_revision() == start
    with db.read() as session:
        assert changes_after(session, start)[0] == []


def test_conditional_update_refuses_a_stale_version(db: Database) -> None:
    qid = _queue(db, "cond")
    with db.read() as session:
        stale = session.get(QueueRow, qid)
    assert stale is not None and stale.version == 1
    with db.write() as tx:
        fresh = tx.session.get(QueueRow, qid)
        assert fresh is not None
        fresh.spec = {"weight": 2}
        tx.stamp(fresh)
    with pytest.raises(StaleDataError), db.write() as tx:
        merged = tx.session.merge(stale, load=False)  # carries version 1; the row is at 2
        merged.spec = {"weight": 3}
        tx.stamp(merged)
    with db.read() as session:
        final = session.get(QueueRow, qid)
        assert final is not None and final.spec == {"weight": 2} and final.version == 2


def test_live_job_names_are_unique_per_project(db: Database) -> None:
    with db.write() as tx:
        user = UserRow(name="u")
        project = ProjectRow(name="p", queues=["default"], default_queue="default")
        tx.session.add_all([user, project])
        tx.session.flush()
        uid, pid = user.id, project.id

    def job(live: str | None) -> JobRow:
        return JobRow(
            name="train",
            live_name=live,
            project_id=pid,
            queue="default",
            owner_id=uid,
            state="PENDING",
            spec={},
            status={},
        )

    with db.write() as tx:
        tx.session.add(job("train"))
    with pytest.raises(IntegrityError), db.write() as tx:
        tx.session.add(job("train"))
    # finished jobs release the name: any number may share it
    with db.write() as tx:
        tx.session.add_all([job(None), job(None)])
    with db.read() as session:
        assert len(session.execute(select(JobRow).where(JobRow.name == "train")).all()) == 3


def test_compaction_drops_history_and_old_watchers_are_told(db: Database) -> None:
    start = db.current_revision()
    for i in range(5):
        _queue(db, f"c{i}")
    with db.write() as tx:
        dropped = compact(tx.session, start + 3)
    assert dropped == 3
    with db.read() as session:
        with pytest.raises(Compacted, match="list again"):
            changes_after(session, start + 1)
        changes, _ = changes_after(session, start + 3)
        assert [c.revision for c in changes] == [start + 4, start + 5]
        compacted = session.execute(select(RevisionRow.compacted)).scalar_one()
    assert compacted == start + 3


def test_pages_never_split_a_revision(db: Database) -> None:
    start = db.current_revision()
    with db.write() as tx:
        for _ in range(3):
            tx.record("job", uuid.uuid4(), "put", None)
    _queue(db, "after")
    with db.read() as session:
        first, resume = changes_after(session, start, limit=2)
        assert [c.revision for c in first] == [start + 1] * 3
        assert resume == start + 1
        rest, _ = changes_after(session, resume, limit=2)
        assert [c.revision for c in rest] == [start + 2]
