"""Queues: a tree with guaranteed quota, borrowing limit and weight."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tessera.api.jobs import JobState, TerminalReason
from tessera.api.queues import DEFAULT_QUEUE, CreateQueueRequest, Queue, QueueSpec, UpdateQueueRequest
from tessera.platform.problems import Conflict, Invalid, NotFound
from tessera.platform.services import convert
from tessera.platform.services.common import put, remove
from tessera.platform.services.identity import members
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import JobRow, ProjectRow, QueueRow


def _row(tx: Tx, name: str) -> QueueRow:
    row = tx.session.execute(select(QueueRow).where(QueueRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no queue named {name!r}", field="name")
    return row


def _check_parent(tx: Tx, name: str, parent: str | None) -> None:
    if parent is None:
        return
    parents = dict(tx.session.execute(select(QueueRow.name, QueueRow.parent)).all())
    if parent not in parents:
        raise Invalid(
            f"parent queue {parent!r} does not exist; existing queues: {sorted(parents)}", field="parent"
        )
    seen: set[str] = {name}
    cursor: str | None = parent
    while cursor is not None:
        if cursor in seen:
            raise Invalid(f"parent {parent!r} would make a cycle through {cursor!r}", field="parent")
        seen.add(cursor)
        cursor = parents.get(cursor)


def create_queue(db: Database, req: CreateQueueRequest) -> Queue:
    spec = QueueSpec.model_validate(req.model_dump(exclude={"name"}))
    try:
        with db.write() as tx:
            _check_parent(tx, req.name, spec.parent)
            row = QueueRow(name=req.name, parent=spec.parent, spec=spec.model_dump(mode="json"))
            return put(tx, "queue", row, convert.queue)
    except IntegrityError:
        raise Conflict(f"a queue named {req.name!r} already exists", field="name") from None


def list_queues(db: Database) -> list[Queue]:
    with db.read() as session:
        return [convert.queue(r) for r in session.execute(select(QueueRow).order_by(QueueRow.name)).scalars()]


def get_queue(db: Database, name: str) -> Queue:
    with db.read() as session:
        row = session.execute(select(QueueRow).where(QueueRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no queue named {name!r}", field="name")
        return convert.queue(row)


def update_queue(db: Database, name: str, req: UpdateQueueRequest) -> Queue:
    with db.write() as tx:
        row = _row(tx, name)
        changes = req.model_dump(mode="json", exclude_unset=True)
        if changes.get("enforcement") is not None:
            # only the policies given change: --memory-policy alone keeps the compute policy
            changes["enforcement"] = {**(row.spec.get("enforcement") or {}), **changes["enforcement"]}
        merged = {**row.spec, **changes}
        spec = QueueSpec.model_validate(merged)
        _check_parent(tx, name, spec.parent)
        row.spec, row.parent = spec.model_dump(mode="json"), spec.parent
        return put(tx, "queue", row, convert.queue)


def delete_queue(db: Database, name: str) -> None:
    """Delete a queue: its pending jobs fail (QueueDeleted); refused while it has
    children, serves as a project's default, or has jobs past PENDING."""
    from tessera.platform.services.jobs import apply_transition

    if name == DEFAULT_QUEUE:
        raise Conflict("the default queue cannot be deleted", field="name")
    with db.write() as tx:
        row = _row(tx, name)
        children = tx.session.execute(select(QueueRow.name).where(QueueRow.parent == name)).scalars().all()
        if children:
            raise Conflict(f"queue {name!r} has child queues {sorted(children)}; delete them first")
        for project in tx.session.execute(select(ProjectRow)).scalars():
            if project.default_queue == name:
                raise Conflict(
                    f"queue {name!r} is the default queue of project {project.name!r}; "
                    "change the project's default_queue first"
                )
        busy = tx.session.execute(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.queue == name, JobRow.live_name.is_not(None), JobRow.state != JobState.PENDING)
        ).scalar_one()
        if busy:
            raise Conflict(
                f"queue {name!r} has {busy} scheduled or running job(s); "
                "cancel them or wait for them to finish"
            )
        pending = (
            tx.session.execute(select(JobRow).where(JobRow.queue == name, JobRow.state == JobState.PENDING))
            .scalars()
            .all()
        )
        for job in pending:
            apply_transition(
                tx,
                job,
                JobState.FAILED,
                reason=TerminalReason.QUEUE_DELETED,
                message=f"queue {name!r} was deleted",
            )
        for project in tx.session.execute(select(ProjectRow)).scalars():
            if name in project.queues:
                project.queues = [q for q in project.queues if q != name]
                put(tx, "project", project, lambda r: convert.project(r, members(tx.session, r.id)))
        remove(tx, "queue", row)
