"""Helpers every service uses to write rows, changes and events in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from tessera.api.events import EventType
from tessera.platform.services import convert
from tessera.platform.store.db import Tx
from tessera.platform.store.rows import EventRow, Stored
from tessera.platform.store.types import utcnow

R = TypeVar("R", bound=Stored)
M = TypeVar("M", bound=BaseModel)


def put(tx: Tx, kind: str, row: R, render: Callable[[R], M]) -> M:
    """Write ``row`` at this transaction's revision and log the change; returns the model."""
    tx.stamp(row)
    tx.session.add(row)
    tx.session.flush()
    model = render(row)
    obj = model.model_dump(mode="json")
    tx.record(kind, row.id, "put", obj, nodes=tx.placement(row, obj))
    return model


def remove(tx: Tx, kind: str, row: Stored, tombstone: dict[str, Any] | None = None) -> None:
    """Delete ``row`` (conditionally on its version) and log the deletion."""
    nodes = tx.placement(row, None)  # where it was, read before it is gone
    tx.session.delete(row)
    tx.session.flush()
    tx.record(kind, row.id, "delete", tombstone, nodes=nodes)


def emit(
    tx: Tx,
    *,
    kind: str,
    object_id: uuid.UUID,
    object_name: str,
    reason: str,
    message: str = "",
    project: str | None = None,
    type: EventType = EventType.NORMAL,
    from_state: str | None = None,
    to_state: str | None = None,
    at: datetime | None = None,
) -> EventRow:
    """Write an event (it is also a change-feed entry of kind ``event``); `at` defaults to now."""
    row = EventRow(
        at=at or utcnow(),
        kind=kind,
        object_id=object_id,
        object_name=object_name,
        project=project,
        type=type,
        reason=reason,
        message=message,
        from_state=from_state,
        to_state=to_state,
    )
    put(tx, "event", row, convert.event)
    return row
