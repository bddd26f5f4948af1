"""SQLAlchemy rows. Every row has a UUID, a ``version`` and the ``revision`` of its last write."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy import (
    false as sa_false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from tessera.platform.store.types import JSONDoc, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Stored(Base):
    """Identity columns of every entity row."""

    __abstract__ = True

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        # the ORM adds "AND version = :old" to every UPDATE/DELETE and bumps it,
        # so a stale read can never overwrite a newer write
        return {"version_id_col": cls.__table__.c.version}


class RevisionRow(Base):
    """The single global revision counter; its row lock orders write transactions."""

    __tablename__ = "revision_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    compacted: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class ChangeRow(Base):
    """The change log: every entity written, at the revision of its transaction."""

    __tablename__ = "changes"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    entity_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    op: Mapped[str] = mapped_column(String(8), nullable=False)
    object: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # for a job: the nodes its tasks were on before this change or are on after it, as
    # ",a,b," ("" for none), so a node's watch finds what concerns it; NULL for other kinds
    nodes: Mapped[str | None] = mapped_column(Text, nullable=True)


class LeaseRow(Base):
    """A lease in the database (the control plane's leader lease): who holds it, in which
    term (``epoch``, raised by each new acquisition), until when. Writes of a leader-only
    controller are fenced on ``holder`` and ``epoch`` (store/db.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    epoch: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserRow(Stored):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    email: Mapped[str | None] = mapped_column(String(254))
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class TokenRow(Stored):
    __tablename__ = "tokens"

    name: Mapped[str] = mapped_column(String(63), nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ProjectRow(Stored):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    queues: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False)
    default_queue: Mapped[str] = mapped_column(String(63), nullable=False)


class MembershipRow(Stored):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)


class QueueRow(Stored):
    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    parent: Mapped[str | None] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)


class NodeRow(Stored):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JSONDoc, nullable=False, default=dict)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    inventory: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    agent_url: Mapped[str | None] = mapped_column(String(255))
    # presented by the control plane when it calls the agent (logs); never rendered
    agent_secret: Mapped[str | None] = mapped_column(String(128))
    # the user whose node-scope tokens may act as this node (set when it first registers)
    agent_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # the agent's last measurement (tessera.api.usage.NodeUsage); not rendered into the node, whose
    # watchers need not see it change with every heartbeat
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class JobRow(Stored):
    __tablename__ = "jobs"
    # (project, live_name) is unique; live_name is NULL once the job is terminal,
    # and NULLs never collide, so only live jobs reserve their name.
    __table_args__ = (
        UniqueConstraint("project_id", "live_name"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state", "state"),
    )

    name: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    live_name: Mapped[str | None] = mapped_column(String(63))
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    queue: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    status: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    # set for a service replica's workload (its owner): such jobs are listed with their service
    service_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    # the nodes its tasks are on, as of its last logged change ("a,b"): the next change is
    # tagged with these too, so a node hears of a job that leaves it (ChangeRow.nodes)
    placed_nodes: Mapped[str | None] = mapped_column(Text)


class TaskRow(Stored):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "group_name", "index"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    group_name: Mapped[str] = mapped_column(String(63), nullable=False)
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    node: Mapped[str | None] = mapped_column(String(63))
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    message: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # why the node ended it (SliceOOM), when the node did
    reason: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AttemptRow(Stored):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(String(64))
    nodes: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False, default=list)


class AllocationRow(Stored):
    __tablename__ = "allocations"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False)
    node: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    gpu_uuid: Mapped[str | None] = mapped_column(String(96))
    mig_instance: Mapped[str | None] = mapped_column(String(96))
    memory_mib: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    compute_pct: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    tier: Mapped[str | None] = mapped_column(String(32))
    # the queue's enforcement policy when bound (tessera.api.queues.SlicePolicy)
    enforcement: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # the attempt ended but its process may still hold the GPU: the slice stays counted until
    # the agent reports the exit (or the node is declared lost)
    releasing: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=sa_false())


class EventRow(Stored):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_object", "object_id", "revision"),)

    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    object_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    object_name: Mapped[str] = mapped_column(String(63), nullable=False)
    project: Mapped[str | None] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(String(64), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))


class IdempotencyRow(Stored):
    """A submission's idempotency key: retries with the same key return the first job."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)


class SecretRow(Stored):
    """Values a dataset's source is read with; never rendered (only its keys are)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    data: Mapped[dict[str, str]] = mapped_column(JSONDoc, nullable=False)


class DatasetRow(Stored):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    status: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    # the selected files at the source (path, size, etag), from the last listing; not rendered
    manifest: Mapped[list[Any] | None] = mapped_column(JSONDoc)


class DatasetCacheRow(Stored):
    """One node's copy of a dataset, as its agent last reported it."""

    __tablename__ = "dataset_caches"
    __table_args__ = (UniqueConstraint("dataset_id", "node"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    node: Mapped[str] = mapped_column(String(63), nullable=False)
    cached_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    cached_files: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    local_hits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    peer_hits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    source_reads: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class DataLoadRow(Stored):
    __tablename__ = "data_loads"
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    trigger: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # per node: LoadProgress
    nodes: Mapped[list[Any]] = mapped_column(JSONDoc, nullable=False, default=list)
    # globs of a subset load (empty: the whole dataset)
    include: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False, default=list)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ServiceRow(Stored):
    """An inference service; its name is unique in the cluster (it is the gateway's path)."""

    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    queue: Mapped[str] = mapped_column(String(63), nullable=False)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    status: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    # sha256 of the token callers present at the gateway; never rendered
    token_hash: Mapped[str | None] = mapped_column(String(64))


class ServiceRevisionRow(Stored):
    """A service's spec at one ``serve update``, its share of traffic and its scale."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("service_id", "number"),)

    service_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    traffic_percent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    desired_replicas: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    panic: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    cold_start_s: Mapped[float | None] = mapped_column(Float)


class ReplicaRow(Stored):
    """One model server of a revision; ``job_id`` is the workload that runs it on a slice."""

    __tablename__ = "replicas"

    service_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), nullable=False, index=True
    )
    revision_number: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    node: Mapped[str | None] = mapped_column(String(63))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    draining_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
