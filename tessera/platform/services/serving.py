"""Services and their revisions: create, read, update (a new revision), traffic, promote, rollback,
delete, token rotation. Replicas are run by the serving controller (`services/replicas.py`)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.identity import Role
from tessera.api.jobs import JobState, TerminalReason
from tessera.api.serving import (
    Replica,
    ReplicaState,
    Revision,
    RevisionMetrics,
    Service,
    ServiceCreated,
    ServiceSpec,
    ServiceStatus,
    ServiceUpdate,
    TrafficSplit,
    TrafficTarget,
)
from tessera.platform.auth import Principal, new_secret
from tessera.platform.problems import Conflict, Invalid, NotFound
from tessera.platform.services.common import emit, put, remove
from tessera.platform.services.jobs import apply_transition
from tessera.platform.services.nodes import inventories
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import (
    JobRow,
    ProjectRow,
    QueueRow,
    ReplicaRow,
    ServiceRevisionRow,
    ServiceRow,
    UserRow,
)
from tessera.scheduler.feasibility import why_unplaceable

# fields of ServiceUpdate that describe what runs (any of them makes a new revision)
_REVISION_FIELDS = (
    "command",
    "env",
    "image",
    "resources",
    "readiness_path",
    "version",
    "min_replicas",
    "max_replicas",
    "target_concurrency",
    "priority",
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# rendering -----------------------------------------------------------------------------


def service_url(gateway_url: str | None, name: str) -> str | None:
    return f"{gateway_url.rstrip('/')}/serve/{name}/" if gateway_url else None


def project_of(session: Session, service: ServiceRow) -> str:
    project = session.get(ProjectRow, service.project_id)
    return project.name if project else "?"


def render_replica(row: ReplicaRow, service: str, project: str) -> Replica:
    return Replica(
        project=project,
        id=row.id,
        version=row.version,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
        service=service,
        revision_number=row.revision_number,
        state=ReplicaState(row.state),
        job_id=row.job_id,
        node=row.node,
        endpoint=row.endpoint,
        message=row.message,
        started_at=row.started_at,
        ready_at=row.ready_at,
    )


def render_revision(
    row: ServiceRevisionRow,
    service: str,
    project: str,
    ready: int = 0,
    metrics: RevisionMetrics | None = None,
) -> Revision:
    return Revision(
        project=project,
        id=row.id,
        version=row.version,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
        service=service,
        number=row.number,
        spec=ServiceSpec.model_validate(row.spec),
        traffic_percent=row.traffic_percent,
        desired_replicas=row.desired_replicas,
        ready_replicas=ready,
        panic=row.panic,
        cold_start_s=row.cold_start_s,
        metrics=metrics or RevisionMetrics(),
    )


def render_service(
    session: Session,
    row: ServiceRow,
    *,
    detail: bool = True,
    gateway_url: str | None = None,
    metrics: Callable[[uuid.UUID, int], RevisionMetrics] | None = None,
) -> Service:
    project = session.get(ProjectRow, row.project_id)
    project_name = project.name if project else "?"
    owner = session.get(UserRow, row.owner_id)
    status = ServiceStatus.model_validate(row.status)
    status.url = service_url(gateway_url, row.name)
    revisions = replicas = None
    if detail:
        reps = list(
            session.execute(
                select(ReplicaRow).where(ReplicaRow.service_id == row.id).order_by(ReplicaRow.created_at)
            ).scalars()
        )
        replicas = [render_replica(r, row.name, project_name) for r in reps]
        revs = session.execute(
            select(ServiceRevisionRow)
            .where(ServiceRevisionRow.service_id == row.id)
            .order_by(ServiceRevisionRow.number)
        ).scalars()
        revisions = [
            render_revision(
                r,
                row.name,
                project_name,
                sum(1 for p in reps if p.revision_number == r.number and p.state == ReplicaState.READY),
                metrics(row.id, r.number) if metrics else None,
            )
            for r in revs
        ]
    return Service(
        id=row.id,
        version=row.version,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
        name=row.name,
        project=project.name if project else "?",
        queue=row.queue,
        owner=owner.name if owner else "?",
        spec=ServiceSpec.model_validate(row.spec),
        status=status,
        revisions=revisions,
        replicas=replicas,
    )


def _feed(session: Session, row: ServiceRow) -> Service:
    return render_service(session, row, detail=False)


# create --------------------------------------------------------------------------------


def _check_placement(tx: Tx, spec: ServiceSpec, project: ProjectRow) -> str:
    """The service's queue, after checking it and the replica's size against the cluster."""
    queue = spec.queue or project.default_queue
    if tx.session.execute(select(QueueRow.id).where(QueueRow.name == queue)).first() is None:
        known = sorted(tx.session.execute(select(QueueRow.name)).scalars())
        raise Invalid(f"no queue named {queue!r}; existing queues: {known}", field="queue")
    if queue not in project.queues:
        raise Invalid(
            f"project {project.name!r} may not use queue {queue!r}; its queues are {project.queues}",
            field="queue",
        )
    if spec.image is not None:
        raise Invalid(
            "this cluster runs replicas as bare processes on its nodes (local backend), so it cannot "
            "run images; drop --image, or use a cluster with a container runtime (Kubernetes)",
            field="image",
        )
    nodes = inventories(tx)
    reason = why_unplaceable(spec.resources, nodes) if nodes else None
    if reason is not None:
        raise Invalid(f"no registered node could ever hold a replica: {reason}", field="resources")
    return queue


def create_service(db: Database, caller: Principal, spec: ServiceSpec) -> ServiceCreated:
    """Store a service with its first revision (all traffic); the controller starts its replicas."""
    caller.require(spec.project, Role.MEMBER)
    token = None if spec.public else new_secret()
    try:
        with db.write() as tx:
            session = tx.session
            project = session.execute(
                select(ProjectRow).where(ProjectRow.name == spec.project)
            ).scalar_one_or_none()
            if project is None:
                raise Invalid(f"no project named {spec.project!r}", field="project")
            if session.execute(select(ServiceRow.id).where(ServiceRow.name == spec.name)).first():
                raise Conflict(
                    f"a service named {spec.name!r} already exists (names are unique in the cluster: "
                    "they are the gateway's paths); pick another name or delete that service",
                    field="name",
                )
            queue = _check_placement(tx, spec, project)
            spec = spec.model_copy(update={"queue": queue})
            status = ServiceStatus(
                latest_revision=1,
                traffic=[TrafficTarget(revision=1, percent=100)],
                desired_replicas=spec.min_replicas,
            )
            row = ServiceRow(
                name=spec.name,
                project_id=project.id,
                queue=queue,
                owner_id=caller.user_id,
                spec=spec.model_dump(mode="json"),
                status=status.model_dump(mode="json"),
                token_hash=token_hash(token) if token else None,
                revision=tx.revision,
            )
            put(tx, "service", row, lambda r: _feed(session, r))
            _add_revision(tx, row, 1, spec, 100)
            emit(
                tx,
                kind="service",
                object_id=row.id,
                object_name=row.name,
                project=project.name,
                reason="Created",
                message=f"revision 1, {spec.min_replicas}..{spec.max_replicas} replicas in queue "
                f"{queue!r} by {caller.user_name}" + (", public" if spec.public else ""),
            )
            service = render_service(session, row)
    except IntegrityError:
        raise Conflict(f"a service named {spec.name!r} already exists", field="name") from None
    return ServiceCreated(**service.model_dump(), token=token)


def _add_revision(
    tx: Tx, service: ServiceRow, number: int, spec: ServiceSpec, percent: int
) -> ServiceRevisionRow:
    row = ServiceRevisionRow(
        service_id=service.id,
        number=number,
        spec=spec.model_dump(mode="json"),
        traffic_percent=percent,
        desired_replicas=spec.min_replicas if percent > 0 else 0,
        revision=tx.revision,
    )
    put(tx, "revision", row, lambda r: render_revision(r, service.name, project_of(tx.session, service)))
    return row


# read ----------------------------------------------------------------------------------


def find_service(session: Session, caller: Principal, name: str) -> ServiceRow:
    try:
        row = session.get(ServiceRow, uuid.UUID(name))
    except ValueError:
        row = session.execute(select(ServiceRow).where(ServiceRow.name == name)).scalar_one_or_none()
    if row is not None:
        project = session.get(ProjectRow, row.project_id)
        if project is not None and caller.role_in(project.name) is not None:
            return row
    raise NotFound(f"no service named {name!r} (that you can see)", field="name")


def _editable(tx: Tx, caller: Principal, name: str) -> tuple[ServiceRow, ProjectRow | None]:
    """A service the caller may change (a member of its project), and its project."""
    row = find_service(tx.session, caller, name)
    project = tx.session.get(ProjectRow, row.project_id)
    caller.require(project.name if project else "?", Role.MEMBER)
    return row, project


def list_services(
    db: Database, caller: Principal, project: str | None, gateway_url: str | None = None
) -> list[Service]:
    visible = caller.visible_projects()
    with db.read() as session:
        query = select(ServiceRow).order_by(ServiceRow.name)
        if project is not None:
            pid = session.execute(select(ProjectRow.id).where(ProjectRow.name == project)).scalar()
            if pid is None:
                raise Invalid(f"no project named {project!r}", field="project")
            query = query.where(ServiceRow.project_id == pid)
        out = []
        for row in session.execute(query).scalars():
            svc = render_service(session, row, detail=False, gateway_url=gateway_url)
            if visible is None or svc.project in visible:
                out.append(svc)
        return out


def get_service(
    db: Database,
    caller: Principal,
    name: str,
    gateway_url: str | None = None,
    metrics: Callable[[uuid.UUID, int], RevisionMetrics] | None = None,
) -> Service:
    with db.read() as session:
        row = find_service(session, caller, name)
        return render_service(session, row, gateway_url=gateway_url, metrics=metrics)


# update --------------------------------------------------------------------------------


def _revisions(session: Session, service_id: uuid.UUID) -> list[ServiceRevisionRow]:
    query = (
        select(ServiceRevisionRow)
        .where(ServiceRevisionRow.service_id == service_id)
        .order_by(ServiceRevisionRow.number)
    )
    return list(session.execute(query).scalars())


def _apply_split(tx: Tx, row: ServiceRow, split: dict[int, int], message: str, caller: Principal) -> None:
    """Write a traffic split (revision -> percent, 100 in all) to the revisions and the service."""
    for rev in _revisions(tx.session, row.id):
        percent = split.get(rev.number, 0)
        if rev.traffic_percent != percent:
            rev.traffic_percent = percent
            if percent > 0 and rev.desired_replicas == 0:  # the autoscaler takes it from here
                rev.desired_replicas = max(1, ServiceSpec.model_validate(rev.spec).min_replicas)
            put(tx, "revision", rev, lambda r: render_revision(r, row.name, project_of(tx.session, row)))
    status = ServiceStatus.model_validate(row.status)
    status.traffic = [TrafficTarget(revision=n, percent=p) for n, p in sorted(split.items()) if p > 0]
    row.status = status.model_dump(mode="json")
    put(tx, "service", row, lambda r: _feed(tx.session, r))
    project = tx.session.get(ProjectRow, row.project_id)
    emit(
        tx,
        kind="service",
        object_id=row.id,
        object_name=row.name,
        project=project.name if project else None,
        reason="TrafficChanged",
        message=f"{message}: "
        + ", ".join(f"revision {n} {p}%" for n, p in sorted(split.items()) if p > 0)
        + f" (by {caller.user_name})",
    )


def update_service(db: Database, caller: Principal, name: str, update: ServiceUpdate) -> ServiceCreated:
    """A new revision from the latest spec with ``update`` applied; it gets ``canary`` percent of the
    traffic (default all), the rest staying with the revision that served most. ``env`` is merged
    (a null value removes a variable). Making a public service private mints its token (returned)."""
    changes = update.model_dump(exclude_unset=True, exclude={"canary"})
    if not changes:
        raise Invalid("nothing to update: give at least one field to change", field="body")
    token = None
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        latest = ServiceSpec.model_validate(row.spec)
        fields = update_fields(update)
        if update.env is not None:
            merged = {**latest.env, **update.env}
            fields["env"] = {k: v for k, v in merged.items() if v is not None}
        try:
            spec = ServiceSpec.model_validate({**latest.model_dump(mode="json"), **fields})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise Invalid(f"{first['msg'].removeprefix('Value error, ')}", field=where) from None
        if project is not None:
            _check_placement(tx, spec, project)
        if spec.public != latest.public:
            token = None if spec.public else new_secret()
            row.token_hash = token_hash(token) if token else None
        row.spec = spec.model_dump(mode="json")
        if any(f in changes for f in _REVISION_FIELDS):
            # the new revision's replicas run for whoever changed what runs
            row.owner_id = caller.user_id
            _new_revision(tx, row, spec, update.canary, caller)
        else:  # only service-level fields changed
            put(tx, "service", row, lambda r: _feed(tx.session, r))
        service = render_service(tx.session, row)
    return ServiceCreated(**service.model_dump(), token=token)


def _new_revision(tx: Tx, row: ServiceRow, spec: ServiceSpec, canary: int | None, caller: Principal) -> None:
    status = ServiceStatus.model_validate(row.status)
    number = status.latest_revision + 1
    share = 100 if canary is None else canary
    current = {t.revision: t.percent for t in status.traffic}
    split = {number: share}
    if share < 100:
        if not current:
            raise Invalid("no revision serves traffic to keep the rest; give --canary 100", field="canary")
        keep = max(current, key=lambda n: (current[n], n))
        split[keep] = 100 - share
    _add_revision(tx, row, number, spec, 0)
    status.latest_revision = number
    row.status = status.model_dump(mode="json")
    _apply_split(tx, row, split, f"revision {number} created", caller)


def update_fields(update: ServiceUpdate) -> dict[str, object]:
    return update.model_dump(mode="json", exclude_unset=True, exclude={"canary"})


def set_traffic(db: Database, caller: Principal, name: str, split: TrafficSplit) -> Service:
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        numbers = {r.number for r in _revisions(tx.session, row.id)}
        for i, target in enumerate(split.targets):
            if target.revision not in numbers:
                raise Invalid(
                    f"service {row.name!r} has no revision {target.revision}; it has {sorted(numbers)}",
                    field=f"targets.{i}.revision",
                )
        _apply_split(tx, row, {t.revision: t.percent for t in split.targets}, "traffic set", caller)
        return render_service(tx.session, row)


def promote(db: Database, caller: Principal, name: str, revision: int | None = None) -> Service:
    """All traffic to ``revision`` (default the latest)."""
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        status = ServiceStatus.model_validate(row.status)
        target = revision or status.latest_revision
        if target not in {r.number for r in _revisions(tx.session, row.id)}:
            raise Invalid(f"service {row.name!r} has no revision {target}", field="revision")
        _apply_split(tx, row, {target: 100}, f"revision {target} promoted", caller)
        return render_service(tx.session, row)


def rollback(db: Database, caller: Principal, name: str, revision: int | None = None) -> Service:
    """All traffic back to ``revision`` (default: the newest revision before the latest)."""
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        status = ServiceStatus.model_validate(row.status)
        numbers = [r.number for r in _revisions(tx.session, row.id)]
        if revision is None:
            older = [n for n in numbers if n < status.latest_revision]
            if not older:
                raise Invalid(
                    f"service {row.name!r} has only revision {numbers}; nothing to roll back to",
                    field="revision",
                )
            revision = max(older)
        elif revision not in numbers:
            raise Invalid(f"service {row.name!r} has no revision {revision}", field="revision")
        _apply_split(tx, row, {revision: 100}, f"rolled back to revision {revision}", caller)
        return render_service(tx.session, row)


def rotate_token(db: Database, caller: Principal, name: str) -> ServiceCreated:
    token = new_secret()
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        spec = ServiceSpec.model_validate(row.spec)
        if spec.public:
            raise Invalid(f"service {row.name!r} is public: it has no token", field="public")
        row.token_hash = token_hash(token)
        put(tx, "service", row, lambda r: _feed(tx.session, r))
        service = render_service(tx.session, row)
    return ServiceCreated(**service.model_dump(), token=token)


# delete --------------------------------------------------------------------------------


def delete_service(db: Database, caller: Principal, name: str) -> None:
    """Delete a service: its replicas' workloads are cancelled in the same transaction."""
    caller.roles()
    with db.write() as tx:
        row, project = _editable(tx, caller, name)
        jobs = tx.session.execute(select(JobRow).where(JobRow.service_id == row.id)).scalars()
        for job in jobs:
            if not JobState(job.state).terminal:
                apply_transition(
                    tx, job, JobState.CANCELLED, reason=TerminalReason.CANCELLED, message="service deleted"
                )
        emit(
            tx,
            kind="service",
            object_id=row.id,
            object_name=row.name,
            project=project.name if project else None,
            reason="Deleted",
            message=f"by {caller.user_name}",
        )
        tombstone = {"service": row.name, "project": project.name if project else None}
        for child in [
            *tx.session.execute(select(ReplicaRow).where(ReplicaRow.service_id == row.id)).scalars(),
            *tx.session.execute(
                select(ServiceRevisionRow).where(ServiceRevisionRow.service_id == row.id)
            ).scalars(),
        ]:
            kind = "replica" if isinstance(child, ReplicaRow) else "revision"
            remove(tx, kind, child, tombstone)
        remove(tx, "service", row, {"name": row.name, "project": tombstone["project"]})
