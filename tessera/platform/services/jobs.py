"""Jobs: submit (idempotent), list, get, cancel, delete, and the one transition writer."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlparse

from sqlalchemy import Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.cluster import NodeInventory
from tessera.api.identity import Role
from tessera.api.jobs import (
    ElasticSpec,
    Job,
    JobSpec,
    JobState,
    JobStatus,
    PendingReason,
    SubmitJobRequest,
    TaskState,
    TerminalReason,
)
from tessera.api.resources import Resources
from tessera.jobs import pending
from tessera.jobs.states import transition
from tessera.platform.auth import Principal
from tessera.platform.problems import Conflict, Invalid, NotFound, PreconditionFailed
from tessera.platform.services import convert
from tessera.platform.services.common import emit, put, remove
from tessera.platform.services.nodes import inventories
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import (
    AllocationRow,
    AttemptRow,
    IdempotencyRow,
    JobRow,
    NodeRow,
    ProjectRow,
    QueueRow,
    TaskRow,
    UserRow,
)
from tessera.platform.store.types import utcnow
from tessera.scheduler.feasibility import cluster_holds, why_unplaceable

MAX_PAGE = 500


@dataclass(frozen=True)
class JobFilter:
    project: str | None = None
    queue: str | None = None
    states: tuple[JobState, ...] = ()
    owner: str | None = None
    search: str | None = None
    services: bool = False  # also service replicas' workloads (listed with their service otherwise)


# rendering -----------------------------------------------------------------------------


def render_job(session: Session, row: JobRow, *, detail: bool = True) -> Job:
    project = session.get(ProjectRow, row.project_id)
    owner = session.get(UserRow, row.owner_id)
    tasks = attempts = allocations = None
    if detail:
        tasks = list(session.execute(select(TaskRow).where(TaskRow.job_id == row.id)).scalars())
        attempts = list(session.execute(select(AttemptRow).where(AttemptRow.job_id == row.id)).scalars())
        allocations = list(
            session.execute(select(AllocationRow).where(AllocationRow.job_id == row.id)).scalars()
        )
    return convert.job(
        row,
        project_name=project.name if project else "?",
        owner=owner.name if owner else "?",
        tasks=tasks,
        attempts=attempts,
        allocations=allocations,
    )


def render_jobs(session: Session, rows: list[JobRow]) -> list[Job]:
    """``render_job`` for many rows: their tasks, attempts and allocations in a few IN queries."""
    out: list[Job] = []
    names: dict[uuid.UUID, str] = {}
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        ids = [r.id for r in chunk]
        tasks: dict[uuid.UUID, list[TaskRow]] = {i: [] for i in ids}
        attempts: dict[uuid.UUID, list[AttemptRow]] = {i: [] for i in ids}
        allocs: dict[uuid.UUID, list[AllocationRow]] = {i: [] for i in ids}
        for t in session.execute(select(TaskRow).where(TaskRow.job_id.in_(ids))).scalars():
            tasks[t.job_id].append(t)
        for a in session.execute(select(AttemptRow).where(AttemptRow.job_id.in_(ids))).scalars():
            attempts[a.job_id].append(a)
        for al in session.execute(select(AllocationRow).where(AllocationRow.job_id.in_(ids))).scalars():
            allocs[al.job_id].append(al)
        for row in chunk:
            if row.project_id not in names:
                project = session.get(ProjectRow, row.project_id)
                names[row.project_id] = project.name if project else "?"
            if row.owner_id not in names:
                owner = session.get(UserRow, row.owner_id)
                names[row.owner_id] = owner.name if owner else "?"
            out.append(
                convert.job(
                    row,
                    project_name=names[row.project_id],
                    owner=names[row.owner_id],
                    tasks=tasks[row.id],
                    attempts=attempts[row.id],
                    allocations=allocs[row.id],
                )
            )
    return out


# transitions ---------------------------------------------------------------------------

_TASK_DONE = frozenset({TaskState.SUCCEEDED.value, TaskState.FAILED.value, TaskState.CANCELLED.value})
_MAY_RUN = frozenset({TaskState.STARTING.value, TaskState.RUNNING.value})


def _end_attempt(tx: Tx, row: JobRow, number: int, *, reason: str, at: datetime) -> None:
    """Close the attempt and release its slices.

    A slice whose task may still be running (it was started and has not reported an exit)
    is only marked releasing: it keeps counting against its GPU until the agent reports the
    process gone, so the next job bound there cannot collide with a task still stopping.
    """
    states = dict(tx.session.execute(select(TaskRow.id, TaskRow.state).where(TaskRow.job_id == row.id)).all())
    for alloc in tx.session.execute(
        select(AllocationRow).where(AllocationRow.job_id == row.id, AllocationRow.releasing.is_(False))
    ).scalars():
        if states.get(alloc.task_id) in _MAY_RUN:
            alloc.releasing = True
            tx.stamp(alloc)
        else:
            tx.session.delete(alloc)
    attempt = tx.session.execute(
        select(AttemptRow).where(AttemptRow.job_id == row.id, AttemptRow.number == number)
    ).scalar_one_or_none()
    if attempt is not None and attempt.ended_at is None:
        attempt.ended_at, attempt.reason = at, reason
        tx.stamp(attempt)


def apply_transition(
    tx: Tx,
    row: JobRow,
    to: JobState,
    *,
    reason: TerminalReason | str | None = None,
    message: str = "",
    exit_code: int | None = None,
    pending_reason: PendingReason | None = None,
) -> None:
    """The only writer of a job's state: computes the move, writes row, tasks and event; the
    job's change is logged when the transaction ends (``Tx.put_later``).

    The row write is conditional on the version read (the ORM's version
    column), so a concurrent writer makes this raise instead of overwriting.
    """
    now = utcnow()
    status = JobStatus.model_validate(row.status)
    moved = transition(
        status, to, at=now, reason=reason, message=message, exit_code=exit_code, pending_reason=pending_reason
    )
    row.state = moved.status.state.value
    row.status = moved.status.model_dump(mode="json")
    if to.terminal or to is JobState.PENDING:
        _end_attempt(tx, row, status.attempt, reason=str(moved.event.reason), at=now)
    if to.terminal:
        row.live_name = None
        task_state = {
            JobState.SUCCEEDED: TaskState.SUCCEEDED,
            JobState.FAILED: TaskState.FAILED,
            JobState.CANCELLED: TaskState.CANCELLED,
        }[to]
        for task in tx.session.execute(select(TaskRow).where(TaskRow.job_id == row.id)).scalars():
            if task.state not in _TASK_DONE:
                task.state = task_state.value
                task.finished_at = now
                tx.stamp(task)
    elif to is JobState.PENDING and status.state is not JobState.PENDING:
        # a new attempt starts from scratch; a task keeps its last node until it is bound
        # again, so that node's agent still lists the job (and keeps the old attempt's logs)
        for task in tx.session.execute(select(TaskRow).where(TaskRow.job_id == row.id)).scalars():
            task.state, task.attempt = TaskState.PENDING.value, moved.status.attempt
            task.exit_code, task.started_at, task.finished_at, task.message = None, None, None, ""
            task.reason = None
            tx.stamp(task)
    tx.put_later("job", row, render_jobs)  # rendered once at commit, however many moves it makes
    project = tx.session.get(ProjectRow, row.project_id)
    draft = moved.event
    emit(
        tx,
        kind="job",
        object_id=row.id,
        object_name=row.name,
        project=project.name if project else "?",
        type=draft.type,
        reason=draft.reason,
        message=draft.message,
        from_state=draft.from_state.value,
        to_state=draft.to_state.value,
    )


# submit --------------------------------------------------------------------------------


def _request_hash(req: SubmitJobRequest) -> str:
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _generated_name(req: SubmitJobRequest) -> str:
    return f"{req.kind}-{secrets.token_hex(3)}"


def submit_job(
    db: Database,
    caller: Principal,
    req: SubmitJobRequest,
    idempotency_key: str | None = None,
    checkpoint_root: str | None = None,
    checkpoint_root_is_local: bool = False,
    images: bool = False,
) -> tuple[Job, bool]:
    """Store a new job (PENDING). Returns (job, created); a repeated idempotency
    key returns the first job and creates nothing."""
    caller.require(req.project, Role.MEMBER)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise Invalid("Idempotency-Key must be 1..255 characters", field="Idempotency-Key")
    request_hash = _request_hash(req)
    try:
        with db.write() as tx:
            if idempotency_key:
                first = _replay(tx, caller, idempotency_key, request_hash)
                if first is not None:
                    return first, False
            return _insert(
                tx,
                caller,
                req,
                idempotency_key,
                request_hash,
                (checkpoint_root, checkpoint_root_is_local),
                images,
            ), True
    except IntegrityError:
        if idempotency_key:
            with db.write() as tx:
                first = _replay(tx, caller, idempotency_key, request_hash)
                if first is not None:
                    return first, False
        raise Conflict(
            f"a live job named {req.name!r} already exists in project {req.project!r}"
            if req.name
            else "the generated name clashed with a live job; submit again",
            field="name",
        ) from None


def _replay(tx: Tx, caller: Principal, key: str, request_hash: str) -> Job | None:
    seen = tx.session.execute(
        select(IdempotencyRow).where(IdempotencyRow.user_id == caller.user_id, IdempotencyRow.key == key)
    ).scalar_one_or_none()
    if seen is None:
        return None
    if seen.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was already used for a different request; use a new key for a new job",
            field="Idempotency-Key",
        )
    row = tx.session.get(JobRow, seen.job_id)
    if row is None:
        raise Conflict(
            "this Idempotency-Key belongs to a job that has since been deleted; use a new key",
            field="Idempotency-Key",
        )
    return render_job(tx.session, row)


def _insert(
    tx: Tx,
    caller: Principal,
    req: SubmitJobRequest,
    key: str | None,
    request_hash: str,
    checkpoints: tuple[str | None, bool] = (None, False),
    images: bool = False,
) -> Job:
    session = tx.session
    project = session.execute(select(ProjectRow).where(ProjectRow.name == req.project)).scalar_one_or_none()
    if project is None:
        raise Invalid(f"no project named {req.project!r}", field="project")
    queue = req.queue or project.default_queue
    if session.execute(select(QueueRow.id).where(QueueRow.name == queue)).first() is None:
        known = sorted(session.execute(select(QueueRow.name)).scalars())
        raise Invalid(f"no queue named {queue!r}; existing queues: {known}", field="queue")
    if queue not in project.queues:
        raise Invalid(
            f"project {project.name!r} may not use queue {queue!r}; its queues are {project.queues}",
            field="queue",
        )
    name = req.name or _generated_name(req)
    clash = session.execute(
        select(JobRow.state).where(JobRow.project_id == project.id, JobRow.live_name == name)
    ).scalar_one_or_none()
    if clash is not None:
        raise Conflict(
            f"a live job named {name!r} already exists in project {project.name!r} "
            f"(state {clash}); pick another name or delete that job",
            field="name",
        )
    spec = JobSpec.model_validate({**req.model_dump(mode="json"), "name": name, "queue": queue})
    reserved = sorted(k for k in spec.labels if k.startswith("tessera.io/"))
    if reserved:  # Tessera's own bookkeeping (services' replicas, pods others created) uses them
        raise Invalid(
            f"labels {reserved} use the reserved prefix tessera.io/; pick another prefix",
            field="labels",
        )
    if spec.kind == "serve":
        raise Invalid(
            "kind serve is what a service's replicas run as, made by the service itself; "
            "create a service instead (tessera serve custom, POST /api/v1/services)",
            field="kind",
        )
    for i, group in enumerate(spec.groups):
        if group.image is not None and not images:
            raise Invalid(
                "this cluster runs tasks as bare processes on its nodes (local backend), so it cannot "
                "run images; drop --image, or use a cluster with a container runtime (Kubernetes)",
                field=f"groups.{i}.image",
            )
    nodes = inventories(tx)
    for i, group in enumerate(spec.groups):
        reason = why_unplaceable(group.resources, nodes) if nodes else None
        if reason is not None:
            raise Invalid(
                f"no registered node could ever hold a task of group {group.name!r}: {reason}",
                field=f"groups.{i}.resources",
            )
    checkpoint_root, root_is_local = checkpoints
    if spec.data:
        from tessera.platform.services.datasets import resolve_mounts

        resolve_mounts(tx, project.id, project.name, spec.data)
    if spec.elastic is not None:
        _check_elastic(spec.elastic, spec.groups[0].resources, nodes)
        if spec.elastic.storage is None and root_is_local and len(_hosts(tx)) > 1:
            raise Invalid(
                f"this cluster's nodes are on {len(_hosts(tx))} machines, and the default checkpoint "
                f"directory ({checkpoint_root}) is on the control plane's: give --storage a directory "
                f"every node sees or an fsspec URL (s3://bucket/prefix), or set TESSERA_CHECKPOINTS",
                field="elastic.storage",
            )
    now = utcnow()
    status = JobStatus(
        state=JobState.PENDING,
        pending_reason=pending.WAITING_FOR_SCHEDULER if nodes else pending.NO_NODES,
        submitted_at=now,
    )
    row = JobRow(
        name=name,
        live_name=name,
        project_id=project.id,
        queue=queue,
        owner_id=caller.user_id,
        state=JobState.PENDING.value,
        priority=spec.priority,
        spec=spec.model_dump(mode="json"),
        status=status.model_dump(mode="json"),
        revision=tx.revision,
    )
    session.add(row)
    session.flush()
    if spec.elastic is not None and spec.elastic.storage is None and checkpoint_root:
        # every attempt and every node of the job reads and writes this one place
        storage = f"{checkpoint_root.rstrip('/')}/{project.name}/{name}-{str(row.id)[:8]}"
        spec.elastic.storage = storage
        row.spec = spec.model_dump(mode="json")
    for group in spec.groups:
        for index in range(group.replicas):
            session.add(
                TaskRow(
                    job_id=row.id,
                    group_name=group.name,
                    index=index,
                    state=TaskState.PENDING.value,
                    revision=tx.revision,
                )
            )
    if key:
        session.add(
            IdempotencyRow(
                user_id=caller.user_id,
                key=key,
                request_hash=request_hash,
                job_id=row.id,
                revision=tx.revision,
            )
        )
    job = put(tx, "job", row, lambda r: render_job(tx.session, r))
    emit(
        tx,
        kind="job",
        object_id=row.id,
        object_name=name,
        project=project.name,
        reason="Submitted",
        message=f"{spec.task_count} task(s) in queue {queue!r} by {caller.user_name}",
        to_state=JobState.PENDING.value,
    )
    return job


def _hosts(tx: Tx) -> set[str]:
    """The machines the registered nodes' agents are on (by their URLs' host)."""
    urls = tx.session.execute(select(NodeRow.agent_url)).scalars()
    return {urlparse(url).hostname or "" for url in urls if url}


def _check_elastic(elastic: ElasticSpec, resources: Resources, nodes: list[NodeInventory]) -> None:
    """An elastic job's min_workers must fit the registered cluster; max_workers may exceed it."""
    if not nodes:
        return
    most = cluster_holds(resources, nodes)
    if elastic.min_workers > most:
        raise Invalid(
            f"min_workers {elastic.min_workers} is more than the whole cluster could ever hold at once "
            f"({most} worker(s) of this size on {len(nodes)} node(s)); lower --min-workers "
            f"(max_workers may exceed the cluster: the job grows when it does)",
            field="elastic.min_workers",
        )


# read ----------------------------------------------------------------------------------


def _encode_cursor(row: JobRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), str(row.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ident = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("cursor time without a zone")
        return moment, uuid.UUID(ident)
    except (ValueError, TypeError):
        raise Invalid("continue is not a token returned by a previous page", field="continue") from None


def _visible(query: Select[JobRow], caller: Principal) -> Select[JobRow]:
    projects = caller.visible_projects()
    if projects is None:
        return query
    return query.join(ProjectRow, ProjectRow.id == JobRow.project_id).where(
        ProjectRow.name.in_(sorted(projects))
    )


def list_jobs(
    db: Database, caller: Principal, flt: JobFilter, limit: int = 50, cursor: str | None = None
) -> tuple[list[Job], str | None, int]:
    """A page of jobs, newest first: (jobs, next cursor, revision read at)."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1..{MAX_PAGE}", field="limit")
    revision = db.current_revision()
    with db.read() as session:
        query = _visible(select(JobRow), caller)
        if flt.project:
            pid = session.execute(select(ProjectRow.id).where(ProjectRow.name == flt.project)).scalar()
            if pid is None:
                raise Invalid(f"no project named {flt.project!r}", field="project")
            query = query.where(JobRow.project_id == pid)
        if flt.queue:
            query = query.where(JobRow.queue == flt.queue)
        if flt.states:
            query = query.where(JobRow.state.in_([s.value for s in flt.states]))
        if flt.owner:
            query = query.join(UserRow, UserRow.id == JobRow.owner_id).where(UserRow.name == flt.owner)
        if flt.search:
            query = query.where(JobRow.name.contains(flt.search, autoescape=True))
        if not flt.services:
            query = query.where(JobRow.service_id.is_(None))
        if cursor:
            created, ident = _decode_cursor(cursor)
            query = query.where(
                or_(JobRow.created_at < created, (JobRow.created_at == created) & (JobRow.id < ident))
            )
        rows = (
            session.execute(query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1))
            .scalars()
            .all()
        )
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = [render_job(session, r, detail=False) for r in rows]
    return jobs, (_encode_cursor(rows[-1]) if more and rows else None), revision


def find_job(session: Session, caller: Principal, ref: str, project: str) -> JobRow:
    """A job by UUID, or by name in a project (the live one, else the newest)."""
    row: JobRow | None = None
    try:
        row = session.get(JobRow, uuid.UUID(ref))
    except ValueError:
        pid = session.execute(select(ProjectRow.id).where(ProjectRow.name == project)).scalar()
        if pid is not None:
            row = session.execute(
                select(JobRow)
                .where(JobRow.project_id == pid, JobRow.name == ref)
                .order_by(JobRow.live_name.is_(None), JobRow.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()
    if row is not None:
        owner_project = session.get(ProjectRow, row.project_id)
        if owner_project is not None and caller.role_in(owner_project.name) is not None:
            return row
    raise NotFound(f"no job {ref!r} in project {project!r}", field="name")


def get_job(db: Database, caller: Principal, ref: str, project: str) -> Job:
    with db.read() as session:
        return render_job(session, find_job(session, caller, ref, project))


# cancel / delete ---------------------------------------------------------------------------


def cancel_job(
    db: Database,
    caller: Principal,
    ref: str,
    project: str,
    *,
    message: str = "",
    if_version: int | None = None,
) -> Job:
    """Cancel a live job (member role); cancelling a finished job is a 409."""
    caller.roles()  # read roles before the write lock: never a second connection inside it
    with db.write() as tx:
        row = find_job(tx.session, caller, ref, project)
        job_project = tx.session.get(ProjectRow, row.project_id)
        caller.require(job_project.name if job_project else project, Role.MEMBER)
        if if_version is not None and row.version != if_version:
            raise PreconditionFailed(
                f"job {row.name!r} is at version {row.version}, not {if_version}; read it again",
                field="If-Match",
            )
        if JobState(row.state).terminal:
            raise Conflict(f"job {row.name!r} already finished ({row.state}); nothing to cancel")
        apply_transition(tx, row, JobState.CANCELLED, message=message or f"cancelled by {caller.user_name}")
        return render_job(tx.session, row)


def delete_job(db: Database, caller: Principal, ref: str, project: str) -> None:
    """Delete a job record; a live job is cancelled first (in the same transaction)."""
    caller.roles()  # read roles before the write lock: never a second connection inside it
    with db.write() as tx:
        row = find_job(tx.session, caller, ref, project)
        job_project = tx.session.get(ProjectRow, row.project_id)
        caller.require(job_project.name if job_project else project, Role.MEMBER)
        if not JobState(row.state).terminal:
            apply_transition(tx, row, JobState.CANCELLED, message=f"deleted by {caller.user_name}")
        emit(
            tx,
            kind="job",
            object_id=row.id,
            object_name=row.name,
            project=job_project.name if job_project else None,
            reason="Deleted",
            message=f"deleted by {caller.user_name}",
        )
        # the tombstone names the project, so watchers of other projects never see it
        remove(tx, "job", row, {"name": row.name, "project": job_project.name if job_project else None})
