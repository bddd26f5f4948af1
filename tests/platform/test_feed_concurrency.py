"""Concurrent writers on PostgreSQL never leave a gap a watcher could miss.

A control run with revisions handed out outside the writing transaction (as a
sequence would) shows the same watcher does miss changes, so the test can fail.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import update

from tessera.api.events import Change
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.feed import changes_after
from tessera.platform.store.rows import ChangeRow, RevisionRow
from tests.pg import PostgresServer

WRITERS, WRITES = 6, 30


class UnorderedDatabase(Database):
    """Broken on purpose: takes the revision in its own transaction, so commits can reorder."""

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            revision = conn.execute(
                update(RevisionRow)
                .where(RevisionRow.id == 1)
                .values(revision=RevisionRow.revision + 1)
                .returning(RevisionRow.revision)
            ).scalar_one()
        with self._write() as session, session.begin():
            yield Tx(session=session, revision=revision)


def _run(db: Database) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Writers and one watcher race; returns (changes the watcher saw, all changes)."""
    stop = threading.Event()
    seen: set[tuple[int, int]] = set()
    errors: list[BaseException] = []

    def writer() -> None:
        rng = random.Random()
        try:
            for _ in range(WRITES):
                with db.write() as tx:
                    tx.record("job", uuid.uuid4(), "put", None)
                    time.sleep(rng.uniform(0, 0.004))  # hold the transaction open a little
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def watcher() -> None:
        after = 0
        while True:
            done = stop.is_set()
            with db.read() as session:
                changes, resume = changes_after(session, after)
            seen.update(_keys(changes))
            after = resume
            if done:
                return

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    watch = threading.Thread(target=watcher)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    assert not errors, errors
    with db.read() as session:
        every = {(r.revision, r.seq) for r in session.query(ChangeRow).all()}
    return seen, every


def _keys(changes: list[Change]) -> set[tuple[int, int]]:
    # changes of one revision arrive together, in seq order (seq starts at 1)
    keys: set[tuple[int, int]] = set()
    last, seq = -1, 0
    for c in changes:
        seq = seq + 1 if c.revision == last else 1
        last = c.revision
        keys.add((c.revision, seq))
    return keys


def _fresh(pg_server: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg_server.execute(f"CREATE DATABASE {name} TEMPLATE tessera_template")
    return pg_server.url(name)


@pytest.mark.postgres
def test_watcher_sees_every_change_under_concurrent_writers(pg_server: PostgresServer) -> None:
    db = Database(_fresh(pg_server), pool_size=WRITERS + 2)
    try:
        seen, every = _run(db)
    finally:
        db.dispose()
    assert len(every) == WRITERS * WRITES
    assert seen == every, f"watcher missed {sorted(every - seen)[:10]}"


@pytest.mark.postgres
def test_control_unordered_revisions_do_lose_changes(pg_server: PostgresServer) -> None:
    db = UnorderedDatabase(_fresh(pg_server), pool_size=WRITERS + 2)
    try:
        seen, every = _run(db)
    finally:
        db.dispose()
    assert len(every) == WRITERS * WRITES
    assert every - seen, "expected the broken allocator to let the watcher miss a change"
