"""`tessera explain`: the scheduler's per-node view of one pending job."""

from __future__ import annotations

from tessera.api.jobs import Explanation, JobState, NodeFit
from tessera.platform.auth import Principal
from tessera.platform.controllers.view import load_view
from tessera.platform.services.jobs import get_job
from tessera.platform.store.db import Database
from tessera.platform.store.types import utcnow
from tessera.scheduler.explain import explain


def explain_job(db: Database, caller: Principal, ref: str, project: str) -> Explanation:
    job = get_job(db, caller, ref, project)
    gang = sum(g.gang_size for g in job.spec.groups)
    out = Explanation(
        job=job.name,
        state=job.status.state,
        tasks=len(job.tasks),
        gang_size=gang,
        pending_reason=job.status.pending_reason,
    )
    if job.status.state is not JobState.PENDING:
        return out
    snapshot = load_view(db).snapshot(utcnow())
    pending = next((p for p in snapshot.pending if p.job_id == job.id), None)
    if pending is None:
        return out
    out.nodes = [
        NodeFit(node=v.node, ready=v.ready, tasks_that_fit=v.tasks_that_fit, reasons=list(v.reasons))
        for v in explain(snapshot, pending)
    ]
    return out
