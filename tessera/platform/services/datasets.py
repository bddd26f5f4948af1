"""Datasets, their loads and the secrets their sources are read with.

Secrets are write-only through the API: their keys are shown, their values
never (node agents read them through the node-scoped endpoint when they load).
A dataset's status is assembled from its listing (totals, phase) and its
per-node cache rows (what each agent reported).
"""

from __future__ import annotations

import fnmatch
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.cluster import NodeState
from tessera.api.datasets import (
    CreateDatasetRequest,
    CreateLoadRequest,
    CreateSecretRequest,
    DataLoad,
    Dataset,
    DatasetPhase,
    DatasetSpec,
    DatasetStatus,
    LoadProgress,
    LoadState,
    LoadTrigger,
    NodeCache,
    Secret,
)
from tessera.api.events import EventType
from tessera.api.identity import Role
from tessera.platform.auth import Principal
from tessera.platform.problems import Conflict, Invalid, NotFound
from tessera.platform.services import convert
from tessera.platform.services.common import emit, put, remove
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import (
    DataLoadRow,
    DatasetCacheRow,
    DatasetRow,
    NodeRow,
    ProjectRow,
    SecretRow,
)
from tessera.platform.store.types import utcnow

LIVE_LOADS = (LoadState.PENDING.value, LoadState.RUNNING.value)


def _project(tx: Tx, name: str) -> ProjectRow:
    row = tx.session.execute(select(ProjectRow).where(ProjectRow.name == name)).scalar_one_or_none()
    if row is None:
        raise Invalid(f"no project named {name!r}", field="project")
    return row


# secrets -------------------------------------------------------------------------------------


def _secret(row: SecretRow, project: str) -> Secret:
    return Secret(**convert.meta(row), name=row.name, project=project, keys=sorted(row.data))


def create_secret(db: Database, caller: Principal, req: CreateSecretRequest) -> Secret:
    caller.require(req.project, Role.MEMBER)
    try:
        with db.write() as tx:
            project = _project(tx, req.project)
            row = SecretRow(project_id=project.id, name=req.name, data=dict(req.data))
            # the change feed carries the rendered secret: keys only
            return put(tx, "secret", row, lambda r: _secret(r, project.name))
    except IntegrityError:
        raise Conflict(
            f"a secret named {req.name!r} already exists in project {req.project!r}", field="name"
        ) from None


def list_secrets(db: Database, caller: Principal, project: str) -> list[Secret]:
    caller.require(project, Role.VIEWER)
    with db.read() as session:
        rows = session.execute(
            select(SecretRow)
            .join(ProjectRow, ProjectRow.id == SecretRow.project_id)
            .where(ProjectRow.name == project)
            .order_by(SecretRow.name)
        ).scalars()
        return [_secret(r, project) for r in rows]


def delete_secret(db: Database, caller: Principal, project: str, name: str) -> None:
    caller.require(project, Role.MEMBER)
    with db.write() as tx:
        row = _secret_row(tx, project, name)
        users = [
            d.name
            for d in tx.session.execute(
                select(DatasetRow).where(DatasetRow.project_id == row.project_id)
            ).scalars()
            if DatasetSpec.model_validate(d.spec).credentials == name
        ]
        if users:
            raise Conflict(f"secret {name!r} is used by dataset(s) {users}; delete or change them first")
        remove(tx, "secret", row)


def _secret_row(tx: Tx, project: str, name: str) -> SecretRow:
    row = tx.session.execute(
        select(SecretRow)
        .join(ProjectRow, ProjectRow.id == SecretRow.project_id)
        .where(ProjectRow.name == project, SecretRow.name == name)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no secret named {name!r} in project {project!r}", field="name")
    return row


def secret_values(db: Database, dataset_id: uuid.UUID) -> dict[str, str]:
    """The values a dataset's source is read with (for node agents and the control plane only)."""
    with db.read() as session:
        row = session.get(DatasetRow, dataset_id)
        if row is None:
            raise NotFound(f"no dataset with id {dataset_id}")
        return dataset_secrets(session, row)


def dataset_secrets(session: Session, row: DatasetRow) -> dict[str, str]:
    name = DatasetSpec.model_validate(row.spec).credentials
    if name is None:
        return {}
    secret = session.execute(
        select(SecretRow).where(SecretRow.project_id == row.project_id, SecretRow.name == name)
    ).scalar_one_or_none()
    return dict(secret.data) if secret is not None else {}


# datasets ------------------------------------------------------------------------------------


def render_dataset(tx_or_session: Any, row: DatasetRow) -> Dataset:
    session = getattr(tx_or_session, "session", tx_or_session)
    project = session.get(ProjectRow, row.project_id)
    status = DatasetStatus.model_validate(row.status)
    caches = session.execute(
        select(DatasetCacheRow).where(DatasetCacheRow.dataset_id == row.id).order_by(DatasetCacheRow.node)
    ).scalars()
    total = status.total_bytes or 0
    nodes = [
        NodeCache(
            node=c.node,
            cached_bytes=c.cached_bytes,
            cached_files=c.cached_files,
            cached_percent=round(min(100.0, 100.0 * c.cached_bytes / total), 2) if total else 0.0,
            local_hits=c.local_hits,
            peer_hits=c.peer_hits,
            source_reads=c.source_reads,
            updated_at=c.updated_at,
        )
        for c in caches
    ]
    best = max(nodes, key=lambda n: n.cached_bytes, default=None)
    hits = sum(n.local_hits + n.peer_hits for n in nodes)
    reads = hits + sum(n.source_reads for n in nodes)
    status = status.model_copy(
        update={
            "nodes": nodes,
            "cached_bytes": best.cached_bytes if best else 0,
            "cached_percent": best.cached_percent if best else 0.0,
            "hit_ratio": round(hits / reads, 4) if reads else None,
        }
    )
    return Dataset(
        **convert.meta(row),
        name=row.name,
        project=project.name if project else "?",
        spec=DatasetSpec.model_validate(row.spec),
        status=status,
    )


def create_dataset(db: Database, caller: Principal, req: CreateDatasetRequest) -> Dataset:
    caller.require(req.project, Role.MEMBER)
    spec = DatasetSpec.model_validate(req.model_dump())
    try:
        with db.write() as tx:
            project = _project(tx, spec.project)
            if spec.credentials is not None:
                found = tx.session.execute(
                    select(SecretRow.id).where(
                        SecretRow.project_id == project.id, SecretRow.name == spec.credentials
                    )
                ).first()
                if found is None:
                    raise Invalid(
                        f"no secret named {spec.credentials!r} in project {spec.project!r}; create it with "
                        f"`tessera secret create {spec.credentials} --from-literal KEY=VALUE`",
                        field="credentials",
                    )
            row = DatasetRow(
                project_id=project.id,
                name=spec.name,
                spec=spec.model_dump(mode="json"),
                status=DatasetStatus(message="waiting to list the source").model_dump(mode="json"),
            )
            dataset = put(tx, "dataset", row, lambda r: render_dataset(tx, r))
            _event(tx, row, project.name, "Created", f"source {spec.source}")
            return dataset
    except IntegrityError:
        raise Conflict(
            f"a dataset named {spec.name!r} already exists in project {spec.project!r}", field="name"
        ) from None


def _dataset_row(tx: Tx | Session, project: str, name: str) -> DatasetRow:
    session = tx.session if isinstance(tx, Tx) else tx
    row = session.execute(
        select(DatasetRow)
        .join(ProjectRow, ProjectRow.id == DatasetRow.project_id)
        .where(ProjectRow.name == project, DatasetRow.name == name)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no dataset named {name!r} in project {project!r}", field="name")
    return row


def get_dataset(db: Database, caller: Principal, project: str, name: str) -> Dataset:
    caller.require(project, Role.VIEWER)
    with db.read() as session:
        return render_dataset(session, _dataset_row(session, project, name))


def list_datasets(db: Database, caller: Principal, project: str | None = None) -> list[Dataset]:
    visible = caller.visible_projects()
    with db.read() as session:
        query = select(DatasetRow).join(ProjectRow, ProjectRow.id == DatasetRow.project_id)
        if project is not None:
            caller.require(project, Role.VIEWER)
            query = query.where(ProjectRow.name == project)
        elif visible is not None:
            query = query.where(ProjectRow.name.in_(sorted(visible)))
        rows = session.execute(query.order_by(ProjectRow.name, DatasetRow.name)).scalars().all()
        return [render_dataset(session, r) for r in rows]


def delete_dataset(db: Database, caller: Principal, project: str, name: str) -> None:
    caller.require(project, Role.MEMBER)
    with db.write() as tx:
        row = _dataset_row(tx, project, name)
        _event(tx, row, project, "Deleted", "its node caches are freed as the agents see it gone")
        remove(tx, "dataset", row)


def _event(tx: Tx, row: DatasetRow, project: str, reason: str, message: str, warning: bool = False) -> None:
    emit(
        tx,
        kind="dataset",
        object_id=row.id,
        object_name=row.name,
        project=project,
        reason=reason,
        message=message,
        type=EventType.WARNING if warning else EventType.NORMAL,
    )


def record_listing(
    db: Database,
    dataset_id: uuid.UUID,
    version: int,
    manifest: list[list[Any]] | None,
    error: str | None,
    capacity_mib: int | None,
) -> bool:
    """Store what listing the source found (or why it failed); conditional on the version listed."""
    with db.write() as tx:
        row = tx.session.get(DatasetRow, dataset_id)
        if row is None or row.version != version:
            return False
        project = tx.session.get(ProjectRow, row.project_id)
        project_name = project.name if project else "?"
        status = DatasetStatus.model_validate(row.status)
        now = utcnow()
        if error is not None:
            status = status.model_copy(update={"phase": DatasetPhase.FAILED, "message": error})
            row.status = status.model_dump(mode="json")
            put(tx, "dataset", row, lambda r: render_dataset(tx, r))
            _event(tx, row, project_name, "SourceUnreadable", error, warning=True)
            return True
        assert manifest is not None
        total = sum(int(f[1]) for f in manifest)
        update: dict[str, Any] = {"total_bytes": total, "total_files": len(manifest), "listed_at": now}
        if capacity_mib is not None and total > capacity_mib * 1024 * 1024:
            update |= {
                "phase": DatasetPhase.FAILED,
                "message": (
                    f"the dataset ({total / 2**30:.2f} GiB in {len(manifest)} files) is larger than its "
                    f"cache capacity per node ({capacity_mib / 1024:.2f} GiB): raise "
                    f"cache.capacity_per_node or narrow it with include/exclude"
                ),
            }
        else:
            cached = status.phase if status.phase in (DatasetPhase.LOADING, DatasetPhase.READY) else None
            update |= {
                "phase": cached or DatasetPhase.NOT_CACHED,
                "message": f"{len(manifest)} files, {total} bytes at the source",
            }
        row.status = status.model_copy(update=update).model_dump(mode="json")
        row.manifest = manifest
        put(tx, "dataset", row, lambda r: render_dataset(tx, r))
        if update["phase"] is DatasetPhase.FAILED:
            _event(tx, row, project_name, "TooLarge", update["message"], warning=True)
        else:
            _event(tx, row, project_name, "Listed", update["message"])
        return True


# loads ---------------------------------------------------------------------------------------


def render_load(row: DataLoadRow, dataset: str, project: str) -> DataLoad:
    nodes = [LoadProgress.model_validate(n) for n in row.nodes]
    done = sum(n.bytes_done for n in nodes)
    total = sum(n.bytes_total for n in nodes)
    eta = None
    if row.started_at is not None and done and total > done and row.state == LoadState.RUNNING.value:
        elapsed = (utcnow() - row.started_at).total_seconds()
        eta = round(elapsed * (total - done) / done, 1)
    return DataLoad(
        **convert.meta(row),
        dataset=dataset,
        project=project,
        number=row.number,
        trigger=LoadTrigger(row.trigger),
        state=LoadState(row.state),
        message=row.message,
        include=list(row.include or []),
        nodes=nodes,
        bytes_done=done,
        bytes_total=total,
        files_done=sum(n.files_done for n in nodes),
        files_total=sum(n.files_total for n in nodes),
        percent=round(100.0 * done / total, 2) if total else (100.0 if row.state == "Succeeded" else 0.0),
        eta_seconds=eta,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def create_load(
    db: Database,
    caller: Principal,
    project: str,
    name: str,
    req: CreateLoadRequest,
    trigger: LoadTrigger = LoadTrigger.MANUAL,
) -> DataLoad:
    caller.require(project, Role.MEMBER)
    with db.write() as tx:
        return start_load(tx, _dataset_row(tx, project, name), project, req.nodes, trigger, req.include)


def start_load(
    tx: Tx,
    row: DatasetRow,
    project: str,
    nodes: list[str],
    trigger: LoadTrigger,
    include: list[str] | None = None,
) -> DataLoad:
    """A new load of the dataset (or of the files ``include`` selects), unless one is already under
    way (then that one)."""
    known = set(tx.session.execute(select(NodeRow.name)).scalars())
    unknown = sorted(set(nodes) - known)
    if unknown:
        raise Invalid(f"no node(s) named {unknown}; registered: {sorted(known)}", field="nodes")
    live = tx.session.execute(
        select(DataLoadRow).where(DataLoadRow.dataset_id == row.id, DataLoadRow.state.in_(LIVE_LOADS))
    ).scalar_one_or_none()
    if live is not None:
        return render_load(live, row.name, project)
    status = DatasetStatus.model_validate(row.status)
    if status.phase is DatasetPhase.FAILED:
        raise Conflict(f"dataset {row.name!r} cannot be loaded: {status.message}")
    nodes = nodes or choose_nodes(tx, row)
    if not nodes:
        raise Conflict(f"no Ready node to load dataset {row.name!r} on")
    chosen = subset(row.manifest or [], include or [])
    if include and not chosen:
        raise Invalid(f"include {include} selects none of the dataset's files", field="include")
    size, count = sum(int(f[1]) for f in chosen), len(chosen)
    number = (
        tx.session.execute(
            select(func.max(DataLoadRow.number)).where(DataLoadRow.dataset_id == row.id)
        ).scalar_one()
        or 0
    ) + 1
    load = DataLoadRow(
        dataset_id=row.id,
        number=number,
        trigger=trigger.value,
        state=LoadState.PENDING.value,
        include=list(include or []),
        nodes=[
            LoadProgress(node=n, bytes_total=size, files_total=count).model_dump(mode="json")
            for n in sorted(set(nodes))
        ],
    )
    rendered = put(tx, "dataload", load, lambda r: render_load(r, row.name, project))
    what = f" of {count} files matching {', '.join(include)}" if include else ""
    _event(tx, row, project, "LoadRequested", f"load {number} ({trigger.value}){what}")
    return rendered


def subset(manifest: list[Any], include: list[str]) -> list[Any]:
    """The manifest's files a load takes: all, or those matching one of ``include``'s globs."""
    if not include:
        return list(manifest)
    return [f for f in manifest if any(fnmatch.fnmatch(str(f[0]), g) for g in include)]


def choose_nodes(tx: Tx, dataset: DatasetRow) -> list[str]:
    """The dataset's ``replicas`` Ready nodes, those already holding most of it first."""
    replicas = DatasetSpec.model_validate(dataset.spec).cache.replicas
    ready = list(
        tx.session.execute(select(NodeRow.name).where(NodeRow.state == NodeState.READY.value)).scalars()
    )
    held = dict(
        tx.session.execute(
            select(DatasetCacheRow.node, DatasetCacheRow.cached_bytes).where(
                DatasetCacheRow.dataset_id == dataset.id
            )
        ).all()
    )
    return sorted(ready, key=lambda n: (-held.get(n, 0), n))[:replicas]


def list_loads(db: Database, caller: Principal, project: str, name: str) -> list[DataLoad]:
    caller.require(project, Role.VIEWER)
    with db.read() as session:
        row = _dataset_row(session, project, name)
        loads = session.execute(
            select(DataLoadRow).where(DataLoadRow.dataset_id == row.id).order_by(DataLoadRow.number.desc())
        ).scalars()
        return [render_load(r, row.name, project) for r in loads]


def resolve_mounts(tx: Tx, project_id: uuid.UUID, project: str, mounts: list[Any]) -> None:
    """Check a job's data mounts against the project's datasets and pin each to its dataset's id."""
    for i, mount in enumerate(mounts):
        row = tx.session.execute(
            select(DatasetRow).where(DatasetRow.project_id == project_id, DatasetRow.name == mount.dataset)
        ).scalar_one_or_none()
        if row is None:
            known = sorted(
                tx.session.execute(
                    select(DatasetRow.name).where(DatasetRow.project_id == project_id)
                ).scalars()
            )
            raise Invalid(
                f"no dataset named {mount.dataset!r} in project {project!r}; its datasets: {known or 'none'} "
                f"(create one with `tessera data create`)",
                field=f"data.{i}.dataset",
            )
        status = DatasetStatus.model_validate(row.status)
        if status.phase is DatasetPhase.FAILED:
            raise Invalid(
                f"dataset {mount.dataset!r} cannot be cached: {status.message}", field=f"data.{i}.dataset"
            )
        mount.dataset_id = row.id
