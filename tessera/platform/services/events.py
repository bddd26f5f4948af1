"""Events and the change feed as the API exposes them."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from tessera.api.events import Change, Event
from tessera.api.identity import Scope
from tessera.platform.auth import Principal
from tessera.platform.problems import Invalid
from tessera.platform.services import convert
from tessera.platform.store.db import Database
from tessera.platform.store.feed import changes_after
from tessera.platform.store.rows import EventRow

# kinds whose changes only admins may watch (identity and credentials)
_ADMIN_ONLY_KINDS = frozenset({"user", "token", "membership"})
_PROJECT_SCOPED_KINDS = frozenset(
    {"job", "event", "dataset", "dataload", "secret", "service", "revision", "replica"}
)


def list_events(
    db: Database,
    caller: Principal,
    *,
    kind: str | None = None,
    object_id: uuid.UUID | None = None,
    project: str | None = None,
    after_revision: int = 0,
    limit: int = 200,
) -> list[Event]:
    """Events oldest first, filtered; non-admins see their projects' events and node events."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit must be 1..1000", field="limit")
    visible = caller.visible_projects()
    with db.read() as session:
        query = select(EventRow).where(EventRow.revision > after_revision)
        if kind:
            query = query.where(EventRow.kind == kind)
        if object_id:
            query = query.where(EventRow.object_id == object_id)
        if project:
            query = query.where(EventRow.project == project)
        if visible is not None:
            query = query.where(EventRow.project.in_(sorted(visible)) | EventRow.project.is_(None))
        rows = session.execute(query.order_by(EventRow.revision, EventRow.at).limit(limit)).scalars()
        return [convert.event(r) for r in rows]


def visible_change(caller: Principal, change: Change) -> bool:
    """Whether a watcher may see this change (secrets never travel: tokens hold only hashes)."""
    if caller.admin:
        return True
    if change.kind in _ADMIN_ONLY_KINDS:
        return False
    if Scope.NODE in caller.scopes:
        return True  # node agents act on every project's tasks placed on them
    if change.kind in _PROJECT_SCOPED_KINDS and change.object is not None:
        projects = caller.visible_projects() or set()
        if change.kind == "event" and change.object.get("project") is None:
            return True
        return change.object.get("project") in projects
    if change.kind == "project" and change.object is not None:
        return change.object.get("name") in (caller.visible_projects() or set())
    return True


def read_changes(
    db: Database,
    caller: Principal,
    after: int,
    kinds: list[str],
    limit: int = 500,
    node: str | None = None,
) -> tuple[list[Change], int]:
    with db.read() as session:
        changes, resume = changes_after(session, after, kinds=kinds, node=node, limit=limit)
    return [c for c in changes if visible_change(caller, c)], resume
