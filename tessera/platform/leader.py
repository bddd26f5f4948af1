"""Leader election among control-plane replicas: a lease row in the shared database.

Every replica serves the API; one, the leader, also runs the scheduler and the
controllers. The lease names its holder, its term's ``epoch`` and when it expires.
A replica takes the lease when it has expired (or names this replica already),
raising the epoch; the leader renews it every third of a term and steps down (its
controllers cancelled) as soon as a renewal fails. A graceful shutdown releases the
lease so another replica takes over at once; a killed leader's lease simply expires.

Expiry is judged by the database's clock on PostgreSQL (``clock_timestamp()``), so
the replicas' clocks need not agree. Safety does not rest on clocks at all: the
leader-only controllers write through a fenced view of the database whose every
write transaction checks, after the revision bump that orders all writers, that
the lease still names this replica and this epoch. Taking the lease over is itself
a write transaction, so a stale leader's write either commits before the new term
starts (and the new leader, which lists the store afresh, sees it) or is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import DateTime, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.platform.settings import Settings
from tessera.platform.store.db import Database, Fence
from tessera.platform.store.rows import LeaseRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
CONTROLLERS = "controllers"  # the lease the scheduler and controllers run under
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_MIGRATION_LOCK = 0x7E55E4A  # a PostgreSQL advisory-lock key of Tessera's own

StartTerm = Callable[[Database, int], list[asyncio.Task[None]]]
"""Start the leader-only loops of a term over the fenced database; returns their tasks."""


def replica_name(settings: Settings) -> str:
    """This replica's name in the lease: the configured one, else the host and a hash of its home.

    Stable across restarts, so a replica restarted after a crash need not wait out its own
    lease; two live replicas must not share a name (they would take the lease from each other
    in turn; fencing keeps that safe, not useful)."""
    if settings.replica_name:
        return settings.replica_name
    home = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{home}"


@contextmanager
def migration_lock(db: Database) -> Iterator[None]:
    """Held while migrating: replicas starting together take turns (an advisory lock on
    PostgreSQL), so the second finds the schema current instead of racing the first."""
    if db.is_sqlite:
        yield
        return
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
        try:
            yield
        finally:  # a session-level lock outlives the transaction: unlock it before the pool reuses it
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK})


@dataclass(frozen=True)
class LeaseState:
    holder: str
    epoch: int
    expires_at: datetime


class Lease:
    """One lease row and the operations on it (blocking; the Leader runs them in threads)."""

    def __init__(self, db: Database, holder: str, term: float, name: str = CONTROLLERS) -> None:
        self.db, self.holder, self.term, self.name = db, holder, term, name

    def _now(self) -> Any:
        # the database's clock where there is one to share; SQLite is one machine's file anyway
        return utcnow() if self.db.is_sqlite else func.clock_timestamp(type_=DateTime(timezone=True))

    def _until(self) -> Any:
        return self._now() + timedelta(seconds=self.term)

    def ensure(self) -> None:
        """Create the lease row, expired and held by nobody, unless it exists."""
        try:
            with self.db.transaction() as session:
                if session.get(LeaseRow, self.name) is None:
                    session.add(LeaseRow(name=self.name, holder="", epoch=0, expires_at=_NEVER))
        except IntegrityError:
            pass  # another replica created it first

    def read(self) -> LeaseState | None:
        with self.db.read() as session:
            row = session.get(LeaseRow, self.name)
            return None if row is None else LeaseState(row.holder, row.epoch, row.expires_at)

    def available(self) -> tuple[bool, int]:
        """Whether this replica may take the lease now (expired, or it names this replica),
        and the epoch the lease is at."""
        with self.db.read() as session:
            row = session.execute(
                select(
                    LeaseRow.epoch, or_(LeaseRow.expires_at <= self._now(), LeaseRow.holder == self.holder)
                ).where(LeaseRow.name == self.name)
            ).one_or_none()
        return (False, 0) if row is None else (bool(row[1]), int(row[0]))

    def acquire(self) -> int | None:
        """Take the lease for a new term if it is free; returns the term's epoch, or None.

        A write transaction (it takes the next revision), so it is ordered with every
        fenced write: none of an older term can commit after it."""
        with self.db.write() as tx:
            epoch = tx.session.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == self.name,
                    or_(LeaseRow.expires_at <= self._now(), LeaseRow.holder == self.holder),
                )
                .values(
                    holder=self.holder,
                    epoch=LeaseRow.epoch + 1,
                    expires_at=self._until(),
                    acquired_at=self._now(),
                )
                .returning(LeaseRow.epoch)
                .execution_options(synchronize_session=False)
            ).scalar_one_or_none()
        return None if epoch is None else int(epoch)

    def renew(self, epoch: int) -> bool:
        """Extend this term's lease by a term; False when the lease is no longer this term's."""
        with self.db.transaction() as session:
            done = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.epoch == epoch)
                .values(expires_at=self._until())
                .returning(LeaseRow.epoch)
                .execution_options(synchronize_session=False)
            ).scalar_one_or_none()
        return done is not None

    def release(self, epoch: int) -> None:
        """End this term now (if it is still this replica's), so another replica need not wait."""
        with self.db.transaction() as session:
            session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.epoch == epoch)
                .values(expires_at=self._now())
                .execution_options(synchronize_session=False)
            )

    def holds(self, session: Session, epoch: int) -> bool:
        """Whether the lease, as ``session`` sees it, is still this replica's for ``epoch``."""
        found = session.execute(
            select(LeaseRow.epoch).where(
                LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.epoch == epoch
            )
        ).scalar_one_or_none()
        return found is not None

    def fence(self, epoch: int) -> Fence:
        """The fence of a term: a write goes on only while the lease is still this term's."""
        return lambda session: self.holds(session, epoch)


class Leader:
    """Runs a replica's side of the election: acquire, renew, step down, release."""

    def __init__(self, lease: Lease, start_term: StartTerm) -> None:
        self.lease = lease
        self.start_term = start_term
        self.epoch: int | None = None  # this replica's term, while it leads
        self.seen_epoch = 0  # the lease's epoch as last seen (whoever holds it)
        self._tasks: list[asyncio.Task[None]] = []
        self.renew_every = lease.term / 3
        self.poll_every = min(lease.term / 5, 1.0)  # followers look for an expired lease this often

    @property
    def replica(self) -> str:
        return self.lease.holder

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    async def run(self) -> None:
        """Until cancelled; on the way out, stops this replica's controllers and releases the lease."""
        ensured = False
        try:
            while True:
                try:
                    if not ensured:
                        await run_in_threadpool(self.lease.ensure)
                        ensured = True
                    if self.epoch is None:
                        await self._try_acquire()
                    else:
                        await self._renew(self.epoch)
                except Exception:  # the database is unreachable: no leader here until it answers
                    log.warning("leader lease: the database did not answer", exc_info=True)
                    await self._step_down()
                await asyncio.sleep(self.renew_every if self.epoch is not None else self.poll_every)
        finally:
            await self._step_down(release=True)

    async def _try_acquire(self) -> None:
        free, seen = await run_in_threadpool(self.lease.available)
        self.seen_epoch = seen
        if not free:
            return
        epoch = await run_in_threadpool(self.lease.acquire)
        if epoch is None:
            return  # another replica took it first
        self.epoch = self.seen_epoch = epoch
        log.info("became leader (epoch %d) as %s", epoch, self.replica)
        self._tasks = self.start_term(self.lease.db.fenced(self.lease.fence(epoch)), epoch)

    async def _renew(self, epoch: int) -> None:
        # a slow renewal (the database busy with writes) is waited for, not taken for a loss: the
        # term's writes are fenced, so leading on is safe, and stepping down would throw away the
        # scheduler's view and re-list it under the very load that slowed the renewal. The renewal
        # checks holder and epoch, not expiry: late, it still holds if nobody took the lease.
        renewed = await run_in_threadpool(self.lease.renew, epoch)
        if not renewed:
            await self._step_down()

    async def _step_down(self, release: bool = False) -> None:
        epoch, tasks = self.epoch, self._tasks
        if epoch is None:
            return
        self.epoch, self._tasks = None, []
        for task in tasks:
            task.cancel()
        # a pass already running in a thread may still try to write: the fence refuses it
        await asyncio.gather(*tasks, return_exceptions=True)
        if release:
            try:
                await run_in_threadpool(self.lease.release, epoch)
            except Exception:  # it will expire instead
                log.warning("could not release the leader lease", exc_info=True)
            log.info("stepped down (epoch %d): shutting down", epoch)
        else:
            log.warning("lost leadership (epoch %d)", epoch)


class LeaderCollector(Collector):
    """``tessera_leader`` (1 on the leader) and ``tessera_leader_epoch``, read at scrape time."""

    def __init__(self, leader: Callable[[], Leader | None]) -> None:
        self.leader = leader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        leader = self.leader()
        if leader is None:
            return
        yield GaugeMetricFamily(
            "tessera_leader",
            "1 while this replica leads (runs the scheduler and controllers), else 0.",
            value=1 if leader.is_leader else 0,
        )
        yield GaugeMetricFamily(
            "tessera_leader_epoch",
            "The leader lease's epoch: this replica's term while it leads, else the last seen.",
            value=leader.epoch if leader.epoch is not None else leader.seen_epoch,
        )
