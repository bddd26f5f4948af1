"""Replicas: start them (each runs as a one-task workload the replica owns, as a pod is owned by its
ReplicaSet), follow their workloads' states, drain and stop them, and build the gateway's routes."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.jobs import (
    JobSpec,
    JobState,
    JobStatus,
    RetryPolicy,
    TaskGroupSpec,
    TaskState,
    TerminalReason,
)
from tessera.api.queues import QueueSpec
from tessera.api.serving import (
    LIVE_REPLICA_STATES,
    ReplicaState,
    Route,
    RouteReplica,
    RouteRevision,
    RouteTable,
    ServiceSpec,
    ServiceStatus,
)
from tessera.jobs import pending
from tessera.platform.services.common import emit, put
from tessera.platform.services.jobs import apply_transition, render_job
from tessera.platform.services.serving import project_of, render_replica, render_revision
from tessera.platform.store.db import Tx
from tessera.platform.store.rows import (
    JobRow,
    QueueRow,
    ReplicaRow,
    ServiceRevisionRow,
    ServiceRow,
    TaskRow,
)
from tessera.platform.store.types import utcnow

REPLICA_GROUP = "replica"
BACKOFF_MAX_S = 60
KEEP_ENDED = 20  # ended replicas kept per service (their logs stay reachable through their workloads)
LIVE = frozenset(s.value for s in LIVE_REPLICA_STATES)
RUNNING = frozenset(
    s.value for s in (JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, JobState.RECOVERING)
)


def _put_replica(tx: Tx, row: ReplicaRow, service: ServiceRow) -> None:
    put(tx, "replica", row, lambda r: render_replica(r, service.name, project_of(tx.session, service)))


def _event(tx: Tx, service: ServiceRow, reason: str, message: str, warning: bool = False) -> None:
    from tessera.api.events import EventType

    emit(
        tx,
        kind="service",
        object_id=service.id,
        object_name=service.name,
        project=project_of(tx.session, service),
        reason=reason,
        message=message,
        type=EventType.WARNING if warning else EventType.NORMAL,
    )


# start ---------------------------------------------------------------------------------


def start_replica(tx: Tx, service: ServiceRow, rev: ServiceRevisionRow) -> ReplicaRow:
    """A new replica of ``rev`` and the pending workload that runs it."""
    session = tx.session
    spec = ServiceSpec.model_validate(rev.spec)
    replica = ReplicaRow(
        service_id=service.id,
        revision_number=rev.number,
        state=ReplicaState.PENDING.value,
        message="waiting for a slice",
        revision=tx.revision,
    )
    session.add(replica)
    session.flush()
    queue = session.execute(select(QueueRow).where(QueueRow.name == service.queue)).scalar_one_or_none()
    queue_spec = QueueSpec.model_validate(queue.spec) if queue else QueueSpec()
    env = dict(spec.env)
    env.update(
        {
            "TESSERA_SERVICE": service.name,
            "TESSERA_SERVICE_REVISION": str(rev.number),
            "TESSERA_REPLICA_ID": str(replica.id),
        }
    )
    if spec.version:
        env.setdefault("VERSION", spec.version)
    name = f"{service.name}-r{rev.number}-{secrets.token_hex(3)[:5]}"
    project = project_of(session, service)
    job_spec = JobSpec(
        name=name,
        project=project,
        queue=service.queue,
        kind="serve",
        groups=[
            TaskGroupSpec(
                name=REPLICA_GROUP,
                command=spec.command,
                env=env,
                working_dir=spec.working_dir,
                image=spec.image,
                resources=spec.resources,
            )
        ],
        priority=spec.priority,
        preemptible=queue_spec.services_preemptible,
        retry=RetryPolicy(max_retries=0),  # a failed replica is replaced by a new one
        labels={"tessera.io/service": service.name, "tessera.io/revision": str(rev.number)},
    )
    now = utcnow()
    status = JobStatus(state=JobState.PENDING, pending_reason=pending.WAITING_FOR_SCHEDULER, submitted_at=now)
    job = JobRow(
        name=name,
        live_name=name,
        project_id=service.project_id,
        queue=service.queue,
        owner_id=service.owner_id,
        state=JobState.PENDING.value,
        priority=spec.priority,
        spec=job_spec.model_dump(mode="json"),
        status=status.model_dump(mode="json"),
        service_id=service.id,
        revision=tx.revision,
    )
    session.add(job)
    session.flush()
    session.add(
        TaskRow(
            job_id=job.id,
            group_name=REPLICA_GROUP,
            index=0,
            state=TaskState.PENDING.value,
            revision=tx.revision,
        )
    )
    put(tx, "job", job, lambda r: render_job(session, r))
    replica.job_id = job.id
    _put_replica(tx, replica, service)
    return replica


# follow --------------------------------------------------------------------------------


def _stop_workload(tx: Tx, replica: ReplicaRow, message: str) -> None:
    job = tx.session.get(JobRow, replica.job_id) if replica.job_id else None
    if job is not None and not JobState(job.state).terminal:
        apply_transition(tx, job, JobState.CANCELLED, reason=TerminalReason.CANCELLED, message=message)


def follow_workloads(tx: Tx, service: ServiceRow) -> None:
    """Each live or draining replica's state from its workload's."""
    session = tx.session
    spec = ServiceSpec.model_validate(service.spec)
    rows = session.execute(
        select(ReplicaRow).where(
            ReplicaRow.service_id == service.id,
            ReplicaRow.state.in_([*LIVE, ReplicaState.TERMINATING.value]),
        )
    ).scalars()
    for replica in rows:
        job = session.get(JobRow, replica.job_id) if replica.job_id else None
        if job is None:
            replica.state, replica.message = ReplicaState.FAILED.value, "its workload is gone"
            _put_replica(tx, replica, service)
            continue
        status = JobStatus.model_validate(job.status)
        state = JobState(job.state)
        before = (replica.state, replica.endpoint, replica.message)
        if state.terminal:
            if replica.state == ReplicaState.TERMINATING.value:
                replica.state, replica.message = ReplicaState.STOPPED.value, "scaled down"
            else:
                why = status.message or str(status.reason or state.value)
                replica.state, replica.message = ReplicaState.FAILED.value, f"{state.value}: {why}"
                _event(
                    tx,
                    service,
                    "ReplicaFailed",
                    f"replica {str(replica.id)[:8]} of revision {replica.revision_number} "
                    f"{state.value.lower()} ({why}); a new one replaces it",
                    warning=True,
                )
        elif state is JobState.PENDING:
            if replica.state != ReplicaState.TERMINATING.value:
                replica.state = ReplicaState.PENDING.value
            replica.endpoint = replica.node = None
            reason = status.pending_reason
            replica.message = reason.message if reason else "waiting for a slice"
        elif job.state in RUNNING and status.master is not None:
            endpoint = f"{status.master.address}:{status.master.port}"
            if replica.endpoint != endpoint:  # placed (again): ready once the probe says so
                replica.endpoint, replica.node = endpoint, status.master.node
                replica.ready_at = None
                if replica.state != ReplicaState.TERMINATING.value:
                    replica.state = ReplicaState.STARTING.value
                    replica.started_at = utcnow()
                    replica.message = f"starting on {status.master.node}; waiting for its readiness probe"
        if startup_overdue(replica, spec):
            why = (
                f"not ready {spec.startup_timeout.total_seconds():g}s after it started: does it answer "
                f"{spec.readiness_path} with 2xx once loaded?"
            )
            _stop_workload(tx, replica, why)
            replica.state, replica.message = ReplicaState.FAILED.value, why
            _event(tx, service, "ReplicaFailed", f"replica {str(replica.id)[:8]} {why}", warning=True)
        if (replica.state, replica.endpoint, replica.message) != before:
            _put_replica(tx, replica, service)


def startup_overdue(replica: ReplicaRow, spec: ServiceSpec) -> bool:
    """A starting replica that has not passed its readiness probe within the startup timeout."""
    return (
        replica.state == ReplicaState.STARTING.value
        and replica.ready_at is None
        and replica.started_at is not None
        and utcnow() - replica.started_at > spec.startup_timeout
    )


def mark_ready(tx: Tx, replica: ReplicaRow, ready: bool) -> None:
    """A gateway's readiness probe result for a starting or ready replica."""
    service = tx.session.get(ServiceRow, replica.service_id)
    if service is None:
        return
    if ready and replica.state == ReplicaState.STARTING.value:
        now = utcnow()
        first = replica.ready_at is None
        replica.state, replica.message = ReplicaState.READY.value, ""
        replica.ready_at = replica.ready_at or now
        _put_replica(tx, replica, service)
        if not first:  # ready again after its probe failed for a while: not a cold start
            summarize(tx, service)
            return
        cold = (now - replica.created_at).total_seconds()
        rev = tx.session.execute(
            select(ServiceRevisionRow).where(
                ServiceRevisionRow.service_id == service.id,
                ServiceRevisionRow.number == replica.revision_number,
            )
        ).scalar_one_or_none()
        if rev is not None:
            rev.cold_start_s = round(cold, 3)
            put(
                tx,
                "revision",
                rev,
                lambda r: render_revision(r, service.name, project_of(tx.session, service)),
            )
        _event(
            tx,
            service,
            "ReplicaReady",
            f"replica {str(replica.id)[:8]} of revision {replica.revision_number} on {replica.node} ready "
            f"{cold:.1f}s after it was created",
        )
    elif not ready and replica.state == ReplicaState.READY.value:
        replica.state, replica.message = ReplicaState.STARTING.value, "its readiness probe fails"
        _put_replica(tx, replica, service)
    summarize(tx, service)


# scale ---------------------------------------------------------------------------------


def scale_revision(tx: Tx, service: ServiceRow, rev: ServiceRevisionRow, desired: int) -> None:
    """Start or drain replicas of ``rev`` until ``desired`` are live. Replicas not yet ready go first
    (newest first) and stop at once; ready ones drain: no new requests, stopped once idle."""
    session = tx.session
    live = list(
        session.execute(
            select(ReplicaRow).where(
                ReplicaRow.service_id == service.id,
                ReplicaRow.revision_number == rev.number,
                ReplicaRow.state.in_(LIVE),
            )
        ).scalars()
    )
    if len(live) < desired and not _backing_off(tx, service, rev):
        for _ in range(desired - len(live)):
            start_replica(tx, service, rev)
    if len(live) <= desired:
        return
    rank = {ReplicaState.PENDING.value: 0, ReplicaState.STARTING.value: 1, ReplicaState.READY.value: 2}
    extra = sorted(live, key=lambda r: (rank[r.state], -r.created_at.timestamp()))[: len(live) - desired]
    for replica in extra:
        # a replica with an endpoint may already get requests (a gateway routes once its own probe
        # passes, before the control plane hears): it drains like a ready one
        if replica.state == ReplicaState.READY.value or replica.endpoint:
            replica.state, replica.draining_since = ReplicaState.TERMINATING.value, utcnow()
            replica.message = "draining: no new requests; stopped once its requests finish"
        else:
            _stop_workload(tx, replica, "scaled down before it was ready")
            replica.state, replica.message = ReplicaState.STOPPED.value, "scaled down before it was ready"
        _put_replica(tx, replica, service)


def _backing_off(tx: Tx, service: ServiceRow, rev: ServiceRevisionRow) -> bool:
    """Replicas that keep failing are replaced after a growing delay (1s, 2s, 4s ... 60s), counting
    the failures since the revision last had a replica become ready, like a crash-loop back-off."""
    rows = tx.session.execute(
        select(ReplicaRow.state, ReplicaRow.updated_at, ReplicaRow.ready_at)
        .where(ReplicaRow.service_id == service.id, ReplicaRow.revision_number == rev.number)
        .order_by(ReplicaRow.updated_at.desc())
        .limit(KEEP_ENDED)
    ).all()
    streak = 0
    for state, _, ready_at in rows:
        if ready_at is not None:
            break
        streak += state == ReplicaState.FAILED.value
    if streak == 0:
        return False
    last = next(updated for state, updated, _ in rows if state == ReplicaState.FAILED.value)
    delay = min(BACKOFF_MAX_S, 2 ** (streak - 1))
    return bool(utcnow() < last + timedelta(seconds=delay))


def finish_drains(
    tx: Tx, service: ServiceRow, drained: Callable[[uuid.UUID, int], bool], timeout: timedelta
) -> None:
    """Stop draining replicas once every gateway has stopped sending to them and finished their
    requests (``drained(replica_id, revision_of_the_drain)``), or after ``timeout``."""
    now = utcnow()
    rows = tx.session.execute(
        select(ReplicaRow).where(
            ReplicaRow.service_id == service.id, ReplicaRow.state == ReplicaState.TERMINATING.value
        )
    ).scalars()
    for replica in rows:
        since: datetime = replica.draining_since or now
        if drained(replica.id, replica.revision) or now - since > timeout:
            late = not drained(replica.id, replica.revision)
            _stop_workload(tx, replica, "scaled down" + (" (drain timed out)" if late else ""))
            replica.state = ReplicaState.STOPPED.value
            replica.message = "scaled down" + (" after its drain timed out" if late else "")
            _put_replica(tx, replica, service)


def prune_ended(tx: Tx, service: ServiceRow, keep: int = KEEP_ENDED) -> None:
    ended = list(
        tx.session.execute(
            select(ReplicaRow)
            .where(
                ReplicaRow.service_id == service.id,
                ReplicaRow.state.in_([ReplicaState.STOPPED.value, ReplicaState.FAILED.value]),
            )
            .order_by(ReplicaRow.created_at.desc())
        ).scalars()
    )
    for replica in ended[keep:]:
        tx.session.delete(replica)
        tx.session.flush()
        tx.record("replica", replica.id, "delete", None)


def summarize(tx: Tx, service: ServiceRow) -> None:
    """The service's ready and desired replica counts."""
    session = tx.session
    states = session.execute(select(ReplicaRow.state).where(ReplicaRow.service_id == service.id)).scalars()
    ready = sum(1 for s in states if s == ReplicaState.READY.value)
    desired = sum(
        session.execute(
            select(ServiceRevisionRow.desired_replicas).where(ServiceRevisionRow.service_id == service.id)
        )
        .scalars()
        .all()
    )
    status = ServiceStatus.model_validate(service.status)
    if (status.ready_replicas, status.desired_replicas) != (ready, desired):
        status.ready_replicas, status.desired_replicas = ready, desired
        service.status = status.model_dump(mode="json")
        from tessera.platform.services.serving import render_service

        put(tx, "service", service, lambda r: render_service(session, r, detail=False))


# routes --------------------------------------------------------------------------------


def route_table(session: Session, revision: int) -> RouteTable:
    """Every service's revisions with traffic or replicas, and their reachable replicas."""
    routed = {ReplicaState.STARTING.value, ReplicaState.READY.value, ReplicaState.TERMINATING.value}
    routes = []
    for service in session.execute(select(ServiceRow).order_by(ServiceRow.name)).scalars():
        spec = ServiceSpec.model_validate(service.spec)
        replicas: dict[int, list[RouteReplica]] = {}
        for r in session.execute(
            select(ReplicaRow).where(ReplicaRow.service_id == service.id, ReplicaRow.state.in_(routed))
        ).scalars():
            if r.endpoint:
                replicas.setdefault(r.revision_number, []).append(
                    RouteReplica(
                        id=r.id, endpoint=r.endpoint, draining=r.state == ReplicaState.TERMINATING.value
                    )
                )
        revisions = [
            RouteRevision(
                number=rev.number, percent=rev.traffic_percent, replicas=replicas.get(rev.number, [])
            )
            for rev in session.execute(
                select(ServiceRevisionRow)
                .where(ServiceRevisionRow.service_id == service.id)
                .order_by(ServiceRevisionRow.number)
            ).scalars()
            if rev.traffic_percent > 0 or rev.number in replicas
        ]
        routes.append(
            Route(
                service_id=service.id,
                name=service.name,
                project=project_of(session, service),
                public=spec.public,
                token_sha256=None if spec.public else service.token_hash,
                readiness_path=spec.readiness_path,
                hold_timeout_s=spec.hold_timeout.total_seconds(),
                revisions=revisions,
            )
        )
    return RouteTable(revision=revision, services=routes)
