"""Binding jobs to slices and driving their lifecycle from node agents' task reports."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from tessera.api.cluster import NodeInventory, NodeState
from tessera.api.jobs import (
    OBSERVED_REASONS,
    JobSpec,
    JobState,
    JobStatus,
    MasterEndpoint,
    PendingReason,
    TaskReport,
    TaskState,
    TerminalReason,
)
from tessera.api.queues import Enforcement, SlicePolicy, resolve_enforcement
from tessera.jobs.launch import master_port
from tessera.platform.services.common import put
from tessera.platform.services.elastic import retire
from tessera.platform.services.jobs import apply_transition, render_job, render_jobs
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import AllocationRow, AttemptRow, JobRow, NodeRow, QueueRow, TaskRow
from tessera.platform.store.types import utcnow
from tessera.scheduler.model import Bind, SlicePlacement

log = logging.getLogger(__name__)
EPSILON = 1e-6
MAX_FREE_EVICTIONS = 3  # evictions requeued without spending a retry; later ones spend one
# attempts that ended this way spend the job's retry budget (preemption and requeues do not)
_FAILURES = frozenset(
    {
        TerminalReason.ERROR.value,
        TerminalReason.SLICE_OOM.value,
        TerminalReason.HOST_OOM.value,
        TerminalReason.NODE_LOST.value,
        "TaskFailed",
    }
)


# binding -------------------------------------------------------------------------------


def bind_job(tx: Tx, job_id: uuid.UUID, version: int, bind: Bind) -> bool:
    """Bind a PENDING job to its slices, conditionally on the version the scheduler saw.

    The GPUs' current allocations are re-checked inside the transaction, so even a
    stale or second scheduler can never over-commit a GPU. Returns whether it bound.
    """
    session = tx.session
    row = session.get(JobRow, job_id)
    if row is None or row.version != version or row.state != JobState.PENDING.value:
        return False
    placed_on = sorted({p.node for p in bind.placements})
    states = session.execute(select(NodeRow.state).where(NodeRow.name.in_(placed_on))).scalars().all()
    if len(states) != len(placed_on) or any(s != NodeState.READY.value for s in states):
        return False  # the snapshot predates a node going NotReady (or away)
    if not capacity_holds(tx, bind):
        log.warning("bind of %s refused: capacity changed since the snapshot", job_id)
        return False
    attempt = JobStatus.model_validate(row.status).attempt
    task_nodes = bind.task_nodes()
    tasks = {t.id: t for t in session.execute(select(TaskRow).where(TaskRow.job_id == job_id)).scalars()}
    spec = JobSpec.model_validate(row.spec)
    gang = sum(g.gang_size for g in spec.groups)
    if not set(task_nodes) <= set(tasks) or len(task_nodes) < gang:
        return False  # at least the gang, together; never a partial gang
    add_allocations(tx, row, attempt, bind.placements)
    for task_id, task in tasks.items():
        # tasks beyond the gang that did not fit sit this attempt out (no node, no slice)
        task.node, task.attempt, task.state = task_nodes.get(task_id), attempt, TaskState.PENDING.value
        tx.stamp(task)
    nodes = sorted(set(task_nodes.values()))
    session.add(
        AttemptRow(job_id=job_id, number=attempt, started_at=utcnow(), nodes=nodes, revision=tx.revision)
    )
    session.flush()
    message = f"bound to {', '.join(nodes)}"
    update: dict[str, Any] = {}
    # rank 0's endpoint (torch; the Ray head; a service replica's listening port)
    if len(task_nodes) > 1 or spec.elastic is not None or spec.kind == "serve":
        first = min(task_nodes, key=lambda t: (tasks[t].group_name, tasks[t].index))
        update["master"] = _master(tx, job_id, attempt, task_nodes[first])
        if spec.elastic is not None:  # the per-job Ray cluster admits only the job's own processes
            update["master"] = update["master"].model_copy(update={"token": secrets.token_urlsafe(32)})
    if bind.backfill_until is not None:
        update["backfill_until"] = bind.backfill_until
    if update:
        status = JobStatus.model_validate(row.status)
        row.status = status.model_copy(update=update).model_dump(mode="json")
    if bind.backfill_until is not None:
        message += (
            f" as a backfill into room held for a waiting job: expected to end by "
            f"{bind.backfill_until:%Y-%m-%d %H:%M:%S} UTC, or it may be preempted"
        )
    apply_transition(tx, row, JobState.SCHEDULED, message=message)
    return True


def add_allocations(tx: Tx, row: JobRow, attempt: int, placements: Iterable[SlicePlacement]) -> None:
    """Record the job's slices for this attempt, under its queue's enforcement policy."""
    policy = slice_policy(tx, row.queue).model_dump(mode="json")
    for p in placements:
        tx.session.add(
            AllocationRow(
                job_id=row.id,
                task_id=p.task_id,
                node=p.node,
                gpu_uuid=p.gpu_uuid,
                memory_mib=p.memory_mib,
                mig_instance=p.mig_uuid,
                attempt=attempt,
                compute_pct=p.compute_pct,
                # until its node reports the tier it enforces the slice with
                tier="bookkeeping" if p.gpu_uuid else None,
                enforcement=policy if p.gpu_uuid else None,
                revision=tx.revision,
            )
        )


def _master(tx: Tx, job_id: uuid.UUID, attempt: int, node: str) -> MasterEndpoint:
    """Rank 0's endpoint: its node's address (from the agent's URL) and a port no other live job
    has there. The agent checks that no other program holds it before starting rank 0."""
    url = tx.session.execute(select(NodeRow.agent_url).where(NodeRow.name == node)).scalar_one_or_none()
    address = urlparse(url).hostname if url else None
    live = tuple(
        s.value
        for s in (
            JobState.SCHEDULED,
            JobState.STARTING,
            JobState.RUNNING,
            JobState.RESIZING,
            JobState.RECOVERING,
        )
    )
    # a job's master is on a node it holds slices on: only those jobs can hold a port there
    there = select(AllocationRow.job_id).where(AllocationRow.node == node, AllocationRow.releasing.is_(False))
    taken = set()
    query = select(JobRow.status).where(JobRow.state.in_(live), JobRow.id.in_(there))
    for (status,) in tx.session.execute(query).all():
        master = (status or {}).get("master")
        if master and master.get("node") == node:
            taken.add(int(master["port"]))
    return MasterEndpoint(node=node, address=address or "127.0.0.1", port=master_port(job_id, attempt, taken))


def slice_policy(tx: Tx, queue: str) -> SlicePolicy:
    """The enforcement policy of `queue`'s slices: its own fields, each unset one from up the tree."""
    specs: dict[str, dict[str, Any]] = dict(tx.session.execute(select(QueueRow.name, QueueRow.spec)).all())
    chain: list[Enforcement] = []
    cursor: str | None = queue
    while cursor is not None and cursor in specs and len(chain) <= len(specs):
        spec = specs[cursor]
        chain.append(Enforcement.model_validate(spec.get("enforcement") or {}))
        cursor = spec.get("parent")
    return resolve_enforcement(chain)


def capacity_holds(tx: Tx, bind: Bind) -> bool:
    nodes = {p.node for p in bind.placements}
    inventories = {
        name: NodeInventory.model_validate(inv)
        for name, inv in tx.session.execute(
            select(NodeRow.name, NodeRow.inventory).where(NodeRow.name.in_(sorted(nodes)))
        ).all()
    }
    if set(inventories) != nodes:
        return False
    used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for gpu, memory, compute in tx.session.execute(
        select(
            AllocationRow.gpu_uuid, func.sum(AllocationRow.memory_mib), func.sum(AllocationRow.compute_pct)
        )
        .where(AllocationRow.node.in_(sorted(nodes)), AllocationRow.gpu_uuid.is_not(None))
        .group_by(AllocationRow.gpu_uuid)
    ).all():
        if gpu is not None:
            used[gpu] = [float(memory or 0), float(compute or 0)]
    wanted = {p.mig_uuid for p in bind.placements if p.mig_uuid}
    if wanted:  # a MIG instance is one task's: it must exist and be free
        offered = {m.uuid for inv in inventories.values() for g in inv.gpus for m in g.mig_instances}
        taken = tx.session.execute(
            select(AllocationRow.mig_instance).where(AllocationRow.mig_instance.in_(sorted(wanted)))
        ).all()
        if not wanted <= offered or taken or len(wanted) < sum(1 for p in bind.placements if p.mig_uuid):
            return False
    capacity = {g.uuid: g.memory_mib for inv in inventories.values() for g in inv.gpus}
    for p in bind.placements:
        if p.gpu_uuid is None:
            continue
        if p.gpu_uuid not in capacity:
            return False
        used[p.gpu_uuid][0] += p.memory_mib
        used[p.gpu_uuid][1] += p.compute_pct
    return all(
        mem <= capacity[gpu] + EPSILON and comp <= 100 + EPSILON
        for gpu, (mem, comp) in used.items()
        if gpu in capacity
    )


# task reports --------------------------------------------------------------------------


def apply_reports(db: Database, node: str, reports: list[TaskReport]) -> int:
    """Record task reports from ``node``'s agent and move jobs accordingly.

    Reports are idempotent: the agent re-sends after restarts. A report for
    another node's task or an older attempt is ignored. Returns how many applied.
    """
    return apply_node_reports(db, {node: reports})


def apply_node_reports(db: Database, batches: dict[str, list[TaskReport]]) -> int:
    """``apply_reports`` for several nodes in one transaction (the Kubernetes backend reads every
    node's pods at once)."""
    applied = 0
    with db.write() as tx:
        # held for the transaction: the session keeps loaded rows only while something refers to them
        _loaded = _preload(tx.session, [r for batch in batches.values() for r in batch])
        touched: dict[uuid.UUID, JobRow] = {}
        for node, report in ((n, r) for n, batch in batches.items() for r in batch):
            if report.state in (TaskState.SUCCEEDED, TaskState.FAILED):
                _release(tx, node, report)
            task = tx.session.get(TaskRow, report.task_id)
            if task is None or task.node != node or task.attempt != report.attempt:
                continue
            job = tx.session.get(JobRow, task.job_id)
            if job is None or JobStatus.model_validate(job.status).attempt != report.attempt:
                continue
            if _record(tx, task, report):
                applied += 1
                touched[job.id] = job
        for job in touched.values():
            _advance(tx, job)
    return applied


def _preload(session: Session, reports: list[TaskReport]) -> list[object]:
    """Load the reports' tasks and their jobs in two IN queries per 500, so the per-report
    ``session.get`` calls below find them in the session (a report of hundreds of tasks otherwise
    costs two round trips each). The session holds rows weakly: the caller keeps the list."""
    task_ids = list({r.task_id for r in reports})
    loaded: list[object] = []
    for start in range(0, len(task_ids), 500):
        tasks = list(
            session.execute(select(TaskRow).where(TaskRow.id.in_(task_ids[start : start + 500]))).scalars()
        )
        job_ids = list({t.job_id for t in tasks})
        loaded += tasks
        loaded += session.execute(select(JobRow).where(JobRow.id.in_(job_ids))).scalars().all()
    return loaded


def _release(tx: Tx, node: str, report: TaskReport) -> None:
    """The process of an ended attempt has exited: its slice stops counting."""
    drained = (
        tx.session.execute(
            select(AllocationRow).where(
                AllocationRow.task_id == report.task_id,
                AllocationRow.node == node,
                AllocationRow.attempt == report.attempt,
                AllocationRow.releasing.is_(True),
            )
        )
        .scalars()
        .all()
    )
    for alloc in drained:
        tx.session.delete(alloc)
    if drained:
        job = tx.session.get(JobRow, drained[0].job_id)
        if job is not None:
            tx.put_later("job", job, render_jobs)


def _record(tx: Tx, task: TaskRow, report: TaskReport) -> bool:
    done = task.state in {TaskState.SUCCEEDED.value, TaskState.FAILED.value, TaskState.CANCELLED.value}
    changed = False
    if report.exit_code is not None and task.exit_code != report.exit_code:
        task.exit_code, changed = report.exit_code, True
    if report.started_at and task.started_at is None:
        task.started_at, changed = report.started_at, True
    if report.finished_at and task.finished_at is None:
        task.finished_at, changed = report.finished_at, True
    if report.start_error and task.message != report.start_error:
        task.message, changed = report.start_error, True
    if report.reason in OBSERVED_REASONS and task.reason != report.reason.value:
        task.reason, changed = report.reason.value, True
        if report.message:
            task.message = report.message
    # a cancelled job's tasks stay CANCELLED, but their exit codes are still recorded
    if not done and task.state != report.state.value:
        task.state, changed = report.state.value, True
    if changed:
        tx.stamp(task)
    return changed


def _advance(tx: Tx, job: JobRow) -> None:
    """Move a job as far as its tasks' states say (SCHEDULED -> ... -> terminal)."""
    state = JobState(job.state)
    if state.terminal or state is JobState.PENDING:
        return
    attempt = JobStatus.model_validate(job.status).attempt
    bound = select(AllocationRow.task_id).where(
        AllocationRow.job_id == job.id, AllocationRow.releasing.is_(False)
    )
    tasks = list(
        tx.session.execute(
            select(TaskRow).where(TaskRow.job_id == job.id, TaskRow.attempt == attempt, TaskRow.id.in_(bound))
        ).scalars()
    )
    if not tasks:
        return
    states = [TaskState(t.state) for t in tasks]
    started = [s is not TaskState.PENDING for s in states]
    start_errors = [t for t in tasks if t.message and not t.reason and t.state == TaskState.FAILED.value]
    if start_errors and state in (JobState.SCHEDULED, JobState.STARTING):
        first = start_errors[0]
        apply_transition(
            tx,
            job,
            JobState.FAILED,
            reason=TerminalReason.START_ERROR,
            message=f"{first.group_name}-{first.index}: {first.message}",
            exit_code=first.exit_code,
        )
        return
    if state is JobState.SCHEDULED and any(started):
        apply_transition(tx, job, JobState.STARTING, message="node agent accepted the tasks")
        state = JobState.STARTING
    if state is JobState.STARTING and all(started):
        apply_transition(tx, job, JobState.RUNNING, message=f"all {len(tasks)} task(s) started")
        state = JobState.RUNNING
    if job.spec.get("elastic") and state in (JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING):
        _advance_elastic(tx, job, tasks, state)
        return
    if state is not JobState.RUNNING:
        return
    failed = [t for t in tasks if t.state == TaskState.FAILED.value]
    if failed:
        # a task its node stopped (SliceOOM) says more than the exit codes its neighbours got after
        first = next((t for t in failed if t.reason), failed[0])
        what = f"task {first.group_name}-{first.index} exited with code {first.exit_code}"
        evictions = tx.session.execute(
            select(func.count())
            .select_from(AttemptRow)
            .where(AttemptRow.job_id == job.id, AttemptRow.reason == TerminalReason.EVICTED.value)
        ).scalar_one()
        if first.reason == TerminalReason.EVICTED.value and evictions < MAX_FREE_EVICTIONS:
            # the node took the pod away (pressure, drain): requeue, spending no retry, as preemption;
            # past MAX_FREE_EVICTIONS an eviction is a failure like any other (no endless loop)
            apply_transition(
                tx,
                job,
                JobState.PENDING,
                reason=first.reason,
                message=f"task {first.group_name}-{first.index}: {first.message or 'evicted'}; requeued",
            )
            return
        reason = TerminalReason.ERROR
        if first.reason:
            reason = TerminalReason(first.reason)
            what = f"task {first.group_name}-{first.index}: {first.message or reason.value}"
        _fail_or_retry(tx, job, reason, what, first.exit_code)
    elif all(s is TaskState.SUCCEEDED for s in states):
        apply_transition(
            tx, job, JobState.SUCCEEDED, message=f"all {len(tasks)} task(s) exited 0", exit_code=0
        )


def _advance_elastic(tx: Tx, job: JobRow, tasks: list[TaskRow], state: JobState) -> None:
    """An elastic job lives while its head (rank 0: the Ray head and driver) does; other workers
    that exit are retired (their slice freed, a fresh task in their place) and Ray Train goes on."""
    head = min(tasks, key=lambda t: t.index)
    if head.state in (TaskState.SUCCEEDED.value, TaskState.FAILED.value):
        if state is not JobState.RUNNING:
            apply_transition(tx, job, JobState.RUNNING, message=f"the driver exited while {state.value}")
        if head.state == TaskState.SUCCEEDED.value:
            apply_transition(
                tx,
                job,
                JobState.SUCCEEDED,
                message="the driver (rank 0) finished: training complete",
                exit_code=0,
            )
        else:
            what = f"the driver ({head.group_name}-{head.index}) exited with code {head.exit_code}"
            _fail_or_retry(
                tx, job, TerminalReason(head.reason or TerminalReason.ERROR.value), what, head.exit_code
            )
        return
    ended = [
        t for t in tasks if t is not head and t.state in (TaskState.SUCCEEDED.value, TaskState.FAILED.value)
    ]
    for task in ended:
        why = f"{task.group_name}-{task.index} exited with code {task.exit_code}"
        retire(tx, job, task.id, TaskState(task.state), f"{why}; the job goes on with its other workers")
    if ended:
        # worker nodes that die on their own spend the failure budget too, or a broken node would
        # be granted, fail and be replaced forever
        attempt = JobStatus.model_validate(job.status).attempt
        lost = tx.session.execute(
            select(func.count())
            .select_from(TaskRow)
            .where(
                TaskRow.job_id == job.id,
                TaskRow.attempt == attempt,
                TaskRow.state == TaskState.FAILED.value,
                TaskRow.index != head.index,
            )
        ).scalar_one()
        budget = JobSpec.model_validate(job.spec).elastic.max_failures  # type: ignore[union-attr]
        if 0 <= budget < lost:
            if state is not JobState.RUNNING:
                apply_transition(
                    tx, job, JobState.RUNNING, message=f"worker nodes failing while {state.value}"
                )
            what = f"{lost} worker node(s) exited on their own, more than max_failures ({budget})"
            _fail_or_retry(tx, job, TerminalReason.ERROR, what)
            return
        put(tx, "job", job, lambda r: render_job(tx.session, r))
        return
    status = JobStatus.model_validate(job.status)
    releasing = tx.session.execute(
        select(AllocationRow.id)
        .where(AllocationRow.job_id == job.id, AllocationRow.releasing.is_(True))
        .limit(1)
    ).first()
    settled = all(t.state == TaskState.RUNNING.value for t in tasks) and releasing is None
    if state is JobState.RESIZING and settled and status.workers == len(tasks):
        # every slice it holds runs a Ray node and the worker group has that size already
        apply_transition(
            tx, job, JobState.RUNNING, reason="Resized", message=f"running with {len(tasks)} workers"
        )


def _fail_or_retry(
    tx: Tx, job: JobRow, reason: TerminalReason, message: str, exit_code: int | None = None
) -> None:
    """Requeue as a new attempt while the retry budget lasts, else fail with ``reason``."""
    spec = JobSpec.model_validate(job.spec)
    spent = tx.session.execute(
        select(func.count())
        .select_from(AttemptRow)
        .where(AttemptRow.job_id == job.id, AttemptRow.reason.in_(sorted(_FAILURES)))
    ).scalar_one()
    evicted = tx.session.execute(
        select(func.count())
        .select_from(AttemptRow)
        .where(AttemptRow.job_id == job.id, AttemptRow.reason == TerminalReason.EVICTED.value)
    ).scalar_one()
    spent += max(0, evicted - MAX_FREE_EVICTIONS)  # evictions past the free ones spend retries
    if spent < spec.retry.max_retries:
        left = spec.retry.max_retries - spent - 1
        apply_transition(
            tx,
            job,
            JobState.PENDING,
            reason=reason.value,
            message=f"{message}; retrying ({left} retr{'y' if left == 1 else 'ies'} left)",
        )
    elif spec.retry.max_retries:
        apply_transition(
            tx,
            job,
            JobState.FAILED,
            reason=TerminalReason.RETRIES_EXHAUSTED,
            message=f"{message} ({reason.value}); all {spent} retries spent",
            exit_code=exit_code,
        )
    else:
        apply_transition(tx, job, JobState.FAILED, reason=reason, message=message, exit_code=exit_code)


def _live_jobs_on(node: str) -> Select[JobRow]:
    return (
        select(JobRow)
        .join(TaskRow, TaskRow.job_id == JobRow.id)
        .where(TaskRow.node == node, JobRow.live_name.is_not(None), JobRow.state != JobState.PENDING.value)
        .distinct()
    )


def jobs_on(session: Session, node: str) -> list[uuid.UUID]:
    """Live, placed jobs with a task on ``node``."""
    return [row.id for row in session.execute(_live_jobs_on(node)).scalars()]


def node_lost(tx: Tx, node: str) -> int:
    """Jobs with tasks on a lost node: not yet running -> requeue; running -> retry or NodeLost.

    The node's releasing slices are freed too: it is declared gone, so nothing on it counts.
    """
    moved = 0
    for job in tx.session.execute(_live_jobs_on(node)).scalars().all():
        state = JobState(job.state)
        if state in (JobState.SCHEDULED, JobState.STARTING):
            apply_transition(tx, job, JobState.PENDING, message=f"node {node} lost before start")
            moved += 1
        elif state in (JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING):
            if state is not JobState.RUNNING:
                apply_transition(tx, job, JobState.RUNNING, message=f"node {node} lost while {state}")
            _fail_or_retry(tx, job, TerminalReason.NODE_LOST, f"node {node} stopped heartbeating")
            moved += 1
    # after the transitions above (which mark the lost attempts' slices releasing)
    draining = select(AllocationRow).where(AllocationRow.node == node, AllocationRow.releasing.is_(True))
    owners = set()
    for alloc in tx.session.execute(draining).scalars().all():
        tx.session.delete(alloc)
        owners.add(alloc.job_id)
    for job_id in sorted(owners):
        owner = tx.session.get(JobRow, job_id)
        if owner is not None:
            put(tx, "job", owner, lambda r: render_job(tx.session, r))
    return moved


def evict_job(tx: Tx, job_id: uuid.UUID, version: int, reason: str, message: str) -> bool:
    """Stop a placed job for another (whole gang) and requeue it as a new attempt.

    Conditional on the version the scheduler saw. Evictions do not spend the
    job's retry budget: a preemption Tessera decided is not the job's failure.
    """
    row = tx.session.get(JobRow, job_id)
    if row is None or row.version != version:
        return False
    state = JobState(row.state)
    if state in (JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING):
        apply_transition(tx, row, JobState.PREEMPTED, reason=reason, message=message)
    elif state not in (JobState.SCHEDULED, JobState.STARTING):
        return False
    apply_transition(
        tx,
        row,
        JobState.PENDING,
        reason=reason,
        message=message,
        pending_reason=PendingReason(code=reason, message=message),
    )
    return True
