"""What node agents measure: stored with their heartbeats, shown beside allocations, and their events."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from tessera.api.jobs import Job
from tessera.api.queues import SlicePolicy
from tessera.api.usage import JobUsage, NodeEvent, NodeUsage, SliceUsage
from tessera.platform.auth import Principal
from tessera.platform.problems import NotFound
from tessera.platform.services.common import emit, put
from tessera.platform.services.elastic import train_event
from tessera.platform.services.jobs import find_job, render_job
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import AllocationRow, JobRow, NodeRow, ProjectRow, TaskRow


def store_usage(tx: Tx, node: NodeRow, usage: NodeUsage) -> None:
    """Keep the node's latest measurement, and record on each slice the tier its node enforces it with.

    A tier is written only when it changes (the job is rewritten and its watchers see the change); the
    measurement itself is not in the change feed.
    """
    node.usage = usage.model_dump(mode="json")
    ids = [s.slice_id for s in usage.slices]
    if not ids:
        return
    tiers = {s.slice_id: s.tier for s in usage.slices}
    changed: set[uuid.UUID] = set()
    rows = tx.session.execute(
        select(AllocationRow).where(AllocationRow.id.in_(ids), AllocationRow.node == node.name)
    ).scalars()
    for alloc in rows:
        tier = tiers[alloc.id]
        if alloc.tier != tier:
            alloc.tier = tier
            tx.stamp(alloc)
            changed.add(alloc.job_id)
    for job_id in sorted(changed):
        job = tx.session.get(JobRow, job_id)
        if job is not None:
            put(tx, "job", job, lambda r: render_job(tx.session, r))


def record_events(db: Database, node: str, events: list[NodeEvent]) -> int:
    """Write a node agent's events: on the named job when it has a task on this node, else on the node."""
    written = 0
    with db.write() as tx:
        row = tx.session.execute(select(NodeRow).where(NodeRow.name == node)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no node named {node!r}; register it first", field="name")
        for event in events:
            job = _job_on(tx, event.job_id, node) if event.job_id else None
            if event.job_id is not None and job is None:
                continue  # not (or no longer) this node's job: a node writes only about its own
            if job is not None and train_event(tx, job, event):
                written += 1
                continue
            if job is not None:
                project = tx.session.get(ProjectRow, job.project_id)
                emit(
                    tx,
                    kind="job",
                    object_id=job.id,
                    object_name=job.name,
                    project=project.name if project else None,
                    reason=event.reason,
                    message=event.message,
                    type=event.type,
                    at=event.at,
                )
            else:
                emit(
                    tx,
                    kind="node",
                    object_id=row.id,
                    object_name=row.name,
                    reason=event.reason,
                    message=event.message,
                    type=event.type,
                    at=event.at,
                )
            written += 1
    return written


def _job_on(tx: Tx, job_id: uuid.UUID, node: str) -> JobRow | None:
    placed = tx.session.execute(
        select(TaskRow.id).where(TaskRow.job_id == job_id, TaskRow.node == node).limit(1)
    ).first()
    return tx.session.get(JobRow, job_id) if placed else None


def node_usage(db: Database, caller: Principal, name: str) -> NodeUsage:
    """The node's latest measurement; slices of projects the caller cannot see are left out."""
    with db.read() as session:
        row = session.execute(select(NodeRow).where(NodeRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no node named {name!r}", field="name")
        usage = row.usage
    if usage is None:
        raise NotFound(f"node {name!r} has not reported any usage yet", field="name")
    return _visible(NodeUsage.model_validate(usage), caller)


def _visible(usage: NodeUsage, caller: Principal) -> NodeUsage:
    projects = caller.visible_projects()
    if projects is None:
        return usage
    slices = [s for s in usage.slices if s.project in projects]
    # other users' processes are none of a member's business
    gpus = [g.model_copy(update={"unattributed": []}) for g in usage.gpus]
    return usage.model_copy(update={"slices": slices, "gpus": gpus})


def job_usage(db: Database, caller: Principal, ref: str, project: str) -> JobUsage:
    """A job's slices, allocation beside what its nodes last measured."""
    with db.read() as session:
        job = render_job(session, find_job(session, caller, ref, project))
        nodes = sorted({a.node for a in job.allocations})
        reports: dict[str, dict[str, Any] | None] = dict(
            session.execute(select(NodeRow.name, NodeRow.usage).where(NodeRow.name.in_(nodes))).all()
        )
    measured: dict[uuid.UUID, SliceUsage] = {}
    for doc in reports.values():
        if doc:
            measured.update({s.slice_id: s for s in NodeUsage.model_validate(doc).slices})
    return JobUsage(
        job=job.name,
        project=job.project,
        state=job.status.state.value,
        slices=[measured.get(a.id) or _unmeasured(job, a.id) for a in job.allocations if a.gpu_uuid],
    )


def _unmeasured(job: Job, slice_id: uuid.UUID) -> SliceUsage:
    """A slice its node has not reported on yet: the allocation alone."""
    alloc = next(a for a in job.allocations if a.id == slice_id)
    task = next((t for t in job.tasks if t.id == alloc.task_id), None)
    tier = alloc.tier or "bookkeeping"
    return SliceUsage(
        slice_id=alloc.id,
        job_id=job.id,
        job=job.name,
        project=job.project,
        task=f"{task.group}-{task.index}" if task else "?",
        gpu_uuid=alloc.gpu_uuid or "",
        mig_instance=alloc.mig_instance,
        memory_mib=alloc.memory_mib,
        compute_pct=alloc.compute_pct,
        tier=tier,
        memory_tier=tier,
        compute_tier="measure",
        policy=alloc.enforcement or SlicePolicy(),
        state="unmeasured",
    )
