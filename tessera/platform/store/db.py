"""Engine, sessions and write transactions that feed the change log.

Every write transaction starts by bumping the single revision counter row.
On PostgreSQL that ``UPDATE`` takes the row's lock until commit, so write
transactions commit in revision order and a watcher reading the change log
``WHERE revision > last`` can never see revision N+1 before N is visible.
On SQLite the transaction is ``BEGIN IMMEDIATE``, which serialises writers
the same way.

A write transaction may carry a fence: a check, run right after the revision bump
(so under the writers' order), that the writer still holds the lease it acts
under; if not, the transaction raises ``Fenced`` and changes nothing. Taking a
lease over is itself a write transaction, so a fenced write of an old term either
commits before the new term starts or is refused (tessera/platform/leader.py).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import Engine, create_engine, event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from tessera.platform.store.rows import ChangeRow, RevisionRow, Stored
from tessera.platform.store.types import utcnow

_WRITE = "tessera_write"
WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Fence = Callable[[Session], bool]
"""Whether a write transaction may go on: run inside it, after the revision bump."""


class Fenced(Exception):
    """A fenced write was refused: its writer no longer holds the lease it acted under."""


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create an engine with the settings Tessera relies on for each database."""
    if _is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # pysqlite's own BEGIN handling is off (isolation_level=None); writers
            # take the write lock up front so they never deadlock upgrading it
            immediate = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


RenderMany = Callable[[Session, list[Any]], list[Any]]
"""Rows of one kind to their API models (pydantic), in order."""


def _node_tag(nodes: set[str]) -> str:
    """ ",a,b," (a node's watch matches ",a,"), or "" for none."""
    return f",{','.join(sorted(nodes))}," if nodes else ""


@dataclass
class Tx:
    """A write transaction: its session, its revision, and the changes it logged."""

    session: Session
    revision: int
    _seq: int = field(default=0)
    # rows whose change is logged when the transaction ends: (kind, id) -> (row, render_many)
    _later: dict[tuple[str, uuid.UUID], tuple[Any, RenderMany]] = field(default_factory=dict)

    def stamp(self, row: Stored) -> None:
        """Mark a row as written by this transaction."""
        row.revision = self.revision
        row.updated_at = utcnow()
        if row.created_at is None:
            row.created_at = row.updated_at

    def put_later(self, kind: str, row: Stored, render_many: RenderMany) -> None:
        """Write ``row`` at this revision and log its change when the transaction ends: rendered
        once however often it changes meanwhile, with the other rows of its kind in one call
        (a node's report that moves hundreds of jobs renders them in a few queries)."""
        self.stamp(row)
        self.session.add(row)
        self._later[(kind, row.id)] = (row, render_many)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction whose deferred changes are logged inside it (a change that fails
        to render rolls it back); rolled back, it takes back the ``put_later`` calls made in it."""
        later = dict(self._later)
        try:
            with self.session.begin_nested():
                yield
                self.log_later()
        except BaseException:
            self._later = later
            raise

    def log_later(self) -> None:
        """Log the changes ``put_later`` deferred (``Database.write`` calls it before committing)."""
        while self._later:
            waiting = list(self._later.items())
            self._later.clear()
            self.session.flush()
            groups: dict[tuple[str, RenderMany], list[Any]] = {}
            for (kind, _), (row, render_many) in waiting:
                groups.setdefault((kind, render_many), []).append(row)
            for (kind, render_many), rows in groups.items():
                for row, model in zip(rows, render_many(self.session, rows), strict=True):
                    obj = model.model_dump(mode="json")
                    self.record(kind, row.id, "put", obj, nodes=self.placement(row, obj))

    def placement(self, row: Any, obj: dict[str, Any] | None) -> str | None:
        """The change's node tag for a row placed on nodes (a job, with ``placed_nodes``): the
        nodes its tasks were on before (as of its last change) and are on in ``obj``, as ",a,b,"
        ("" for none), so a node's watch hears of a job that comes to it and of one that leaves it.
        Records where the row is now. None for rows of other kinds.

        ``obj`` None is a deletion: the tag names where the row was.
        """
        if not hasattr(row, "placed_nodes"):
            return None
        before = {n for n in (row.placed_nodes or "").split(",") if n}
        if obj is None:
            return _node_tag(before)
        after = {t["node"] for t in obj.get("tasks") or () if t.get("node")}
        if after != before:
            # past the row's version: where it is placed is bookkeeping, not an edit of the job
            table = type(row).__table__
            where = ",".join(sorted(after))
            self.session.execute(update(table).where(table.c.id == row.id).values(placed_nodes=where))
            self.session.expire(row, ["placed_nodes"])  # read again (a rolled-back savepoint undoes it)
        return _node_tag(before | after)

    def record(
        self,
        kind: str,
        entity_id: uuid.UUID,
        op: str,
        obj: dict[str, Any] | None,
        *,
        nodes: str | None = None,
    ) -> None:
        """Append a change to the log at this transaction's revision (a ``put_later`` of the same
        entity is then logged by this one); ``nodes`` is its node tag (:meth:`placement`)."""
        self._later.pop((kind, entity_id), None)
        self._seq += 1
        self.session.add(
            ChangeRow(
                revision=self.revision,
                seq=self._seq,
                kind=kind,
                entity_id=entity_id,
                op=op,
                object=obj,
                nodes=nodes,
            )
        )


class Database:
    """Owns the engine; hands out read sessions and write transactions."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.is_sqlite = _is_sqlite(url)
        write_engine = self.engine.execution_options(**{_WRITE: True})
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite admits one writer; queueing this process's writers on a fair lock beats
        # SQLite's busy handler, which sleeps and polls (long tails under contention)
        self._sqlite_writer = threading.Lock() if self.is_sqlite else None
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        self._fence: Fence | None = None
        # the writers' saturation (metrics.py exposes them; fenced views share them, a shallow copy)
        self.write_wait = Histogram(
            "tessera_db_write_wait_seconds",
            "Time write transactions waited for this process's SQLite writer slot (none on PostgreSQL).",
            buckets=WRITE_BUCKETS,
            registry=None,
        )
        self.write_held = Histogram(
            "tessera_db_write_seconds",
            "Duration of write transactions, to commit.",
            buckets=WRITE_BUCKETS,
            registry=None,
        )

    def fenced(self, fence: Fence) -> Database:
        """A view of this database (same engine and pool) whose write transactions are
        refused with ``Fenced`` unless ``fence`` holds; reads are unchanged."""
        view = copy.copy(self)
        view._fence = fence
        return view

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; closing it ends its transaction (objects stay loaded)."""
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A write transaction holding the next revision; commits on success.

        On a fenced view, raises ``Fenced`` (nothing written) when the fence fails."""
        with self._writer_slot(), self._write() as session, session.begin():
            revision = session.execute(
                update(RevisionRow)
                .where(RevisionRow.id == 1)
                .values(revision=RevisionRow.revision + 1)
                .returning(RevisionRow.revision)
            ).scalar_one()
            if self._fence is not None and not self._fence(session):
                raise Fenced("this replica no longer holds the lease it writes under")
            tx = Tx(session=session, revision=revision)
            yield tx
            tx.log_later()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction that takes no revision and logs no change: bookkeeping no
        watcher follows (a lease's renewal). Serialised with other writers on SQLite only."""
        with self._writer_slot(), self._write() as session, session.begin():
            yield session

    @contextmanager
    def _writer_slot(self) -> Iterator[None]:
        """This process's turn to write: SQLite's one writer slot (timed: waiting for it, then
        holding it); on PostgreSQL only the transaction's length is timed."""
        asked = time.perf_counter()
        with self._sqlite_writer or nullcontext():
            got = time.perf_counter()
            if self._sqlite_writer is not None:
                self.write_wait.observe(got - asked)
            try:
                yield
            finally:
                self.write_held.observe(time.perf_counter() - got)

    def current_revision(self) -> int:
        with self.read() as session:
            return session.execute(select(RevisionRow.revision).where(RevisionRow.id == 1)).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()
