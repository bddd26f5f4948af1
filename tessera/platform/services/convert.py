"""Rows to domain models (responses), in one place."""

from __future__ import annotations

from typing import Any

from tessera.api.cluster import Node, NodeInventory, NodeState
from tessera.api.events import Event
from tessera.api.identity import Membership, Project, Role, Scope, Token, User
from tessera.api.jobs import Allocation, Attempt, Job, JobSpec, JobStatus, Task, TaskState, TerminalReason
from tessera.api.queues import Queue, QueueSpec, SlicePolicy
from tessera.platform.store.rows import (
    AllocationRow,
    AttemptRow,
    EventRow,
    JobRow,
    NodeRow,
    ProjectRow,
    QueueRow,
    Stored,
    TaskRow,
    TokenRow,
    UserRow,
)


def meta(row: Stored) -> dict[str, Any]:
    return {
        "id": row.id,
        "version": row.version,
        "revision": row.revision,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def user(row: UserRow) -> User:
    return User(**meta(row), name=row.name, email=row.email, is_admin=row.is_admin, disabled=row.disabled)


def token(row: TokenRow, user_name: str) -> Token:
    return Token(
        **meta(row),
        name=row.name,
        user=user_name,
        scopes=[Scope(s) for s in row.scopes],
        prefix=row.prefix,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def project(row: ProjectRow, members: list[tuple[str, str]]) -> Project:
    return Project(
        **meta(row),
        name=row.name,
        description=row.description,
        queues=row.queues,
        default_queue=row.default_queue,
        members=[Membership(user=u, role=Role(r)) for u, r in sorted(members)],
    )


def queue(row: QueueRow) -> Queue:
    return Queue(**meta(row), name=row.name, spec=QueueSpec.model_validate(row.spec))


def node(row: NodeRow) -> Node:
    return Node(
        **meta(row),
        name=row.name,
        labels=row.labels,
        state=NodeState(row.state),
        inventory=NodeInventory.model_validate(row.inventory),
        last_heartbeat_at=row.last_heartbeat_at,
        agent_url=row.agent_url,
    )


def task(row: TaskRow) -> Task:
    return Task(
        id=row.id,
        group=row.group_name,
        index=row.index,
        state=TaskState(row.state),
        node=row.node,
        attempt=row.attempt,
        message=row.message,
        exit_code=row.exit_code,
        reason=TerminalReason(row.reason) if row.reason else None,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def job(
    row: JobRow,
    *,
    project_name: str,
    owner: str,
    tasks: list[TaskRow] | None = None,
    attempts: list[AttemptRow] | None = None,
    allocations: list[AllocationRow] | None = None,
) -> Job:
    return Job(
        **meta(row),
        name=row.name,
        project=project_name,
        queue=row.queue,
        owner=owner,
        spec=JobSpec.model_validate(row.spec),
        status=JobStatus.model_validate(row.status),
        tasks=[task(t) for t in sorted(tasks or [], key=lambda t: (t.group_name, t.index))],
        attempts=[
            Attempt(
                number=a.number, started_at=a.started_at, ended_at=a.ended_at, reason=a.reason, nodes=a.nodes
            )
            for a in sorted(attempts or [], key=lambda a: a.number)
        ],
        allocations=[_allocation(a) for a in allocations or [] if not a.releasing],
        draining=[_allocation(a) for a in allocations or [] if a.releasing],
    )


def _allocation(a: AllocationRow) -> Allocation:
    return Allocation(
        id=a.id,
        job_id=a.job_id,
        task_id=a.task_id,
        node=a.node,
        gpu_uuid=a.gpu_uuid,
        mig_instance=a.mig_instance,
        memory_mib=a.memory_mib,
        compute_pct=a.compute_pct,
        tier=a.tier,
        enforcement=SlicePolicy.model_validate(a.enforcement) if a.enforcement else None,
        attempt=a.attempt,
    )


def event(row: EventRow) -> Event:
    return Event(
        id=row.id,
        revision=row.revision,
        at=row.at,
        kind=row.kind,
        object_id=row.object_id,
        object_name=row.object_name,
        project=row.project,
        type=row.type,
        reason=row.reason,
        message=row.message,
        from_state=row.from_state,
        to_state=row.to_state,
    )
