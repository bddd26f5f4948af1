"""Elastic jobs in the store: grants, shrinks, retired workers and what Ray Train reports.

A grant binds more of the job's tasks (one slice each) in its current attempt:
the job goes RESIZING until its Ray worker group runs at the new size. A
shrink marks the extras' slices releasing (they count until their processes
exit) and retires their tasks; a fresh task row takes each retired one's place,
so the job can be granted again later. A worker that exits on its own is
retired the same way; the job goes on while its head (rank 0, the Ray head and
driver) runs. Ray Train's own account (node agent events from the head's
task) ends RESIZING and RECOVERING: ``running`` with the worker group's size,
``failed`` when Ray restarts the group (a preemption, i.e. a reclaim Tessera
asked for, is not counted against the job's failure budget).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, select

from tessera.api.cluster import NodeState
from tessera.api.events import EventType
from tessera.api.jobs import JobSpec, JobState, JobStatus, TaskState
from tessera.api.usage import NodeEvent
from tessera.platform.services.common import emit, put
from tessera.platform.services.jobs import apply_transition, render_job
from tessera.platform.store.db import Tx
from tessera.platform.store.rows import AllocationRow, JobRow, NodeRow, ProjectRow, TaskRow
from tessera.scheduler.model import Bind, Grant, Shrink

log = logging.getLogger(__name__)
_MAY_RUN = frozenset({TaskState.STARTING.value, TaskState.RUNNING.value})
TRAINING_RUNNING = "TrainingRunning"
TRAINING_FAILED = "TrainingFailed"


def _bound(tx: Tx, job_id: uuid.UUID) -> set[uuid.UUID]:
    query = select(AllocationRow.task_id).where(
        AllocationRow.job_id == job_id, AllocationRow.releasing.is_(False)
    )
    return set(tx.session.execute(query).scalars())


def grant_slices(tx: Tx, grant: Grant) -> bool:
    """Bind more tasks of a running elastic job, conditionally on the version the scheduler saw."""
    from tessera.platform.services.execution import add_allocations, capacity_holds

    session = tx.session
    row = session.get(JobRow, grant.job_id)
    if row is None or row.version != grant.version:
        return False
    state = JobState(row.state)
    if state not in (JobState.RUNNING, JobState.RESIZING):
        return False
    spec = JobSpec.model_validate(row.spec)
    if spec.elastic is None:
        return False
    task_nodes = grant.task_nodes()
    nodes = sorted(set(task_nodes.values()))
    states = session.execute(select(NodeRow.state).where(NodeRow.name.in_(nodes))).scalars().all()
    if len(states) != len(nodes) or any(s != NodeState.READY.value for s in states):
        return False
    bound = _bound(tx, row.id)
    tasks = {
        t.id: t for t in session.execute(select(TaskRow).where(TaskRow.id.in_(list(task_nodes)))).scalars()
    }
    if (
        len(tasks) != len(task_nodes)
        or any(
            t.job_id != row.id or t.id in bound or t.state != TaskState.PENDING.value for t in tasks.values()
        )
        or len(bound) + len(tasks) > spec.elastic.max_workers
    ):
        return False
    if not capacity_holds(tx, Bind(row.id, grant.placements)):
        return False
    attempt = JobStatus.model_validate(row.status).attempt
    add_allocations(tx, row, attempt, grant.placements)
    for task_id, task in tasks.items():
        task.node, task.attempt, task.state = task_nodes[task_id], attempt, TaskState.PENDING.value
        task.exit_code = task.started_at = task.finished_at = None
        task.message = ""
        tx.stamp(task)
    session.flush()
    before, after = len(bound), len(bound) + len(tasks)
    message = f"granted {after - before} slice(s) on {', '.join(nodes)}: growing {before} -> {after} workers"
    if state is JobState.RUNNING:
        apply_transition(tx, row, JobState.RESIZING, reason="Granted", message=message)
    else:
        put(tx, "job", row, lambda r: render_job(session, r))
        _event(tx, row, "Granted", message)
    return True


def shrink_job(tx: Tx, shrink: Shrink) -> bool:
    """Take back extra slices of an elastic job (never its gang); the job keeps running."""
    session = tx.session
    row = session.get(JobRow, shrink.job_id)
    if row is None or row.version != shrink.version:
        return False
    state = JobState(row.state)
    if state not in (JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING):
        return False
    spec = JobSpec.model_validate(row.spec)
    bound = _bound(tx, row.id)
    if spec.elastic is None or len(bound) - len(shrink.task_ids) < spec.elastic.min_workers:
        return False
    if not set(shrink.task_ids) <= bound:
        return False
    for task_id in shrink.task_ids:
        retire(tx, row, task_id, TaskState.CANCELLED, f"slice reclaimed: the job {shrink.message}")
    before, after = len(bound), len(bound) - len(shrink.task_ids)
    message = f"{shrink.message}: shrinking {before} -> {after} workers"
    if state is JobState.RUNNING:
        apply_transition(tx, row, JobState.RESIZING, reason="Reclaimed", message=message)
    else:
        put(tx, "job", row, lambda r: render_job(session, r))
        _event(tx, row, "Reclaimed", message)
    return True


def retire(tx: Tx, row: JobRow, task_id: uuid.UUID, state: TaskState, message: str) -> None:
    """End one worker of an elastic job in this attempt and put a fresh task in its place.

    Its slices are released once its process is gone (now, if it has exited).
    """
    session = tx.session
    task = session.get(TaskRow, task_id)
    if task is None:
        return
    # a task never reported started has no process to wait for (as when an attempt ends)
    may_run = task.state in _MAY_RUN
    for alloc in session.execute(
        select(AllocationRow).where(AllocationRow.task_id == task_id, AllocationRow.releasing.is_(False))
    ).scalars():
        if may_run:
            alloc.releasing = True
            tx.stamp(alloc)
        else:
            session.delete(alloc)
    if task.state not in (TaskState.SUCCEEDED.value, TaskState.FAILED.value):
        task.state = state.value
    task.message = message
    tx.stamp(task)
    top = session.execute(
        select(func.max(TaskRow.index)).where(TaskRow.job_id == row.id, TaskRow.group_name == task.group_name)
    ).scalar_one()
    session.add(
        TaskRow(
            job_id=row.id,
            group_name=task.group_name,
            index=int(top) + 1,
            state=TaskState.PENDING.value,
            attempt=task.attempt,
            revision=tx.revision,
        )
    )
    session.flush()
    _prune(tx, row)


RETIRED_KEPT = 32
"""Retired workers kept per job (their state, exit code and logs); older ones are forgotten."""


def _prune(tx: Tx, row: JobRow) -> None:
    """Keep a job's task rows bounded however often its workers are replaced."""
    session = tx.session
    held = select(AllocationRow.task_id).where(AllocationRow.job_id == row.id)
    retired = (
        session.execute(
            select(TaskRow)
            .where(
                TaskRow.job_id == row.id,
                TaskRow.state.in_(
                    [s.value for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)]
                ),
                TaskRow.id.not_in(held),
            )
            .order_by(TaskRow.index)
        )
        .scalars()
        .all()
    )
    for old in retired[: max(0, len(retired) - RETIRED_KEPT)]:
        session.delete(old)


def train_event(tx: Tx, row: JobRow, event: NodeEvent) -> bool:
    """Apply what Ray Train reported about an elastic job; True if it was one of those events."""
    if event.reason not in (TRAINING_RUNNING, TRAINING_FAILED):
        return False
    state = JobState(row.state)
    status = JobStatus.model_validate(row.status)
    if state.terminal or state is JobState.PENDING:
        return True
    if event.reason == TRAINING_RUNNING:
        workers = event.workers or 0
        before = status.workers
        status = status.model_copy(update={"workers": workers})
        row.status = status.model_dump(mode="json")
        if state is JobState.RECOVERING:
            message = f"training resumed with {workers} workers from the latest checkpoint"
            apply_transition(tx, row, JobState.RUNNING, reason="Recovered", message=message)
        elif state is JobState.RESIZING or (before is not None and before != workers):
            message = f"Resized {before if before is not None else '?'} -> {workers} workers"
            if state is JobState.RESIZING:
                apply_transition(tx, row, JobState.RUNNING, reason="Resized", message=message)
            else:
                put(tx, "job", row, lambda r: render_job(tx.session, r))
                _event(tx, row, "Resized", message)
        elif state is JobState.STARTING or state is JobState.SCHEDULED:
            put(tx, "job", row, lambda r: render_job(tx.session, r))
        else:
            put(tx, "job", row, lambda r: render_job(tx.session, r))
        return True
    # a failure Ray Train recovers from: a preemption (a reclaim) is not the job's failure, nor is a
    # worker group that did not start in time (Ray retries those without limit)
    if event.source == "preemption":
        _event(tx, row, "WorkerPreempted", f"a worker's slice was taken back; {event.message}")
        return True
    if event.source == "controller":
        _event(tx, row, "Restarting", f"Ray Train restarts the worker group: {event.message}")
        return True
    failures = status.failures + 1
    spec = JobSpec.model_validate(row.spec)
    budget = spec.elastic.max_failures if spec.elastic else 0
    row.status = status.model_copy(update={"failures": failures}).model_dump(mode="json")
    limit = "no limit" if budget < 0 else str(budget)
    message = (
        f"worker failure {failures} (budget {limit}): Ray Train restarts the worker group from the "
        f"latest checkpoint; {event.message}"
    )
    if state in (JobState.RUNNING, JobState.RESIZING):
        apply_transition(tx, row, JobState.RECOVERING, reason="WorkerFailed", message=message)
    else:
        put(tx, "job", row, lambda r: render_job(tx.session, r))
        _event(tx, row, "WorkerFailed", message)
    return True


def _event(tx: Tx, row: JobRow, reason: str, message: str, kind: EventType = EventType.NORMAL) -> None:
    project = tx.session.get(ProjectRow, row.project_id)
    emit(
        tx,
        kind="job",
        object_id=row.id,
        object_name=row.name,
        project=project.name if project else None,
        reason=reason,
        message=message,
        type=kind,
    )
