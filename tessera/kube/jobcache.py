"""Live jobs as the Kubernetes loops need them, rendered again only when a job's row changed.

Each pass reads only (id, version) of the live jobs; a job is rendered (tasks, allocations) when it
is new or its version moved. Binding, a state change, a new attempt and a resize all write the job's
row, so its version is what says its launches may differ.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.jobs import Job
from tessera.jobs.launch import RUN_STATES
from tessera.kube import names
from tessera.platform.services.jobs import render_jobs
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow


class JobCache:
    def __init__(self, db: Database, states: frozenset[str] | None = None) -> None:
        self.db = db
        self.states = sorted(states or {s.value for s in RUN_STATES})
        self._jobs: dict[uuid.UUID, tuple[int, Job]] = {}
        self._external: dict[uuid.UUID, str | None] = {}  # job -> its pod group's key, if external

    def live(self) -> tuple[list[Job], list[Job]]:
        """(Tessera's own live jobs, live jobs standing for others' pods)."""
        own: list[Job] = []
        external: list[Job] = []
        with self.db.read() as session:
            query = select(JobRow.id, JobRow.version).where(JobRow.state.in_(self.states))
            rows = session.execute(query).all()
            stale = [job_id for job_id, version in rows if self._jobs.get(job_id, (None,))[0] != version]
            for start in range(0, len(stale), 500):
                fresh = session.execute(
                    select(JobRow).where(JobRow.id.in_(stale[start : start + 500]))
                ).scalars()
                for job, row in zip_rendered(session, list(fresh)):
                    self._jobs[job.id] = (row.version, job)
                    self._external[job.id] = job.spec.labels.get(names.EXTERNAL)
            for job_id, _ in rows:
                hit = self._jobs.get(job_id)
                if hit is not None:
                    (external if self._external.get(job_id) else own).append(hit[1])
        alive = {j.id for j in own} | {j.id for j in external}
        for job_id in list(self._jobs):
            if job_id not in alive:
                self._jobs.pop(job_id, None)
                self._external.pop(job_id, None)
        return own, external


def zip_rendered(session: Session, rows: list[JobRow]) -> list[tuple[Job, JobRow]]:
    return list(zip(render_jobs(session, rows), rows, strict=True))
