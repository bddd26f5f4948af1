"""Datasets waiting to be listed: read their source (which files, how big) or say why it cannot be read."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tessera.api.datasets import DatasetPhase, DatasetSpec, DatasetStatus, LoadTrigger
from tessera.datacache.source import LIST_TIMEOUT_S, Source, SourceError
from tessera.platform.controllers.jobindex import JobIndex
from tessera.platform.problems import Conflict, Invalid
from tessera.platform.services.datasets import LIVE_LOADS, record_listing, secret_values, start_load
from tessera.platform.store.db import Database
from tessera.platform.store.rows import DataLoadRow, DatasetRow, ProjectRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="list-source")


def _list(spec: DatasetSpec, secrets: dict[str, str]) -> list[list[object]]:
    return [f.row() for f in Source(spec, secrets).list()]


def list_sources(db: Database, timeout: float = LIST_TIMEOUT_S) -> int:
    """One pass over datasets not listed yet; returns how many it settled."""
    with db.read() as session:
        rows = [
            (row.id, row.version, DatasetSpec.model_validate(row.spec))
            for row in session.execute(select(DatasetRow)).scalars()
            if DatasetStatus.model_validate(row.status).phase is DatasetPhase.PENDING
        ]
    settled = 0
    for dataset_id, version, spec in rows:
        manifest, error = None, None
        future = _pool.submit(_list, spec, secret_values(db, dataset_id))
        try:
            manifest = future.result(timeout=timeout)
        except SourceError as exc:
            error = str(exc)
        except FutureTimeout:
            error = f"listing {spec.source} took longer than {timeout:.0f}s; is it reachable?"
        except Exception as exc:  # a source library's own error: said, not raised
            log.exception("listing %s failed", spec.source)
            error = f"cannot list {spec.source}: {type(exc).__name__}"
        if record_listing(db, dataset_id, version, manifest, error, spec.cache.capacity_mib):
            settled += 1
    return settled


def _not_cached(session: Session, datasets: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``datasets`` that are listed, held by no node and not being loaded."""
    loading = select(DataLoadRow.dataset_id).where(
        DataLoadRow.dataset_id.in_(datasets), DataLoadRow.state.in_(LIVE_LOADS)
    )
    busy = set(session.execute(loading).scalars())
    phases = session.execute(select(DatasetRow.id, DatasetRow.status).where(DatasetRow.id.in_(datasets)))
    return {
        dataset_id
        for dataset_id, status in phases
        if dataset_id not in busy and DatasetStatus.model_validate(status).phase is DatasetPhase.NOT_CACHED
    }


def prewarm_for_jobs(db: Database, index: JobIndex | None = None) -> int:
    """Start a load (trigger ``job``) of every dataset a pending job requires that no node holds yet.

    ``index`` is the term's job index (kept from the change feed); without one, a fresh one
    lists the live jobs."""
    index = index or JobIndex(db)
    index.sync()
    wanted = index.wanted()
    if not wanted:
        return 0
    with db.read() as session:  # most passes find every wanted dataset loading or held: no write
        wanted = _not_cached(session, wanted)
    if not wanted:
        return 0
    started = 0
    with db.write() as tx:
        for dataset_id in sorted(_not_cached(tx.session, wanted)):
            row = tx.session.get(DatasetRow, dataset_id)
            if row is None:
                continue
            project = tx.session.get(ProjectRow, row.project_id)
            try:
                start_load(tx, row, project.name if project else "?", [], LoadTrigger.JOB)
                started += 1
            except (Conflict, Invalid) as exc:  # no Ready node: the job's reason says why it waits
                log.info("cannot prewarm %s for a job: %s", row.name, exc)
    return started


def scheduled_loads(db: Database, now: datetime | None = None) -> int:
    """Start the loads datasets' cron schedules call for (one per schedule tick, none over a live one)."""
    from croniter import croniter

    now = now or utcnow()
    started = 0
    with db.read() as session:
        due = []
        for row in session.execute(select(DatasetRow)).scalars():
            spec = DatasetSpec.model_validate(row.spec)
            if spec.load_schedule is None:
                continue
            last = session.execute(
                select(func.max(DataLoadRow.created_at)).where(
                    DataLoadRow.dataset_id == row.id, DataLoadRow.trigger == LoadTrigger.SCHEDULE.value
                )
            ).scalar_one()
            live = session.execute(
                select(DataLoadRow.id).where(
                    DataLoadRow.dataset_id == row.id, DataLoadRow.state.in_(LIVE_LOADS)
                )
            ).first()
            since = last or row.created_at
            if live is None and croniter(spec.load_schedule, since).get_next(datetime) <= now:
                due.append(row.id)
    for dataset_id in due:
        with db.write() as tx:
            found = tx.session.get(DatasetRow, dataset_id)
            if found is None or DatasetStatus.model_validate(found.status).phase in (
                DatasetPhase.PENDING,
                DatasetPhase.FAILED,
            ):
                continue
            project = tx.session.get(ProjectRow, found.project_id)
            try:
                start_load(tx, found, project.name if project else "?", [], LoadTrigger.SCHEDULE)
                started += 1
            except (Conflict, Invalid) as exc:
                log.info("scheduled load of %s not started: %s", found.name, exc)
    return started
