"""Events: the audit trail of every state change and notable fact."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from tessera.api.common import Model


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Event(Model):
    id: uuid.UUID
    revision: int
    at: datetime
    kind: str
    object_id: uuid.UUID
    object_name: str
    project: str | None = None
    type: EventType = EventType.NORMAL
    reason: str
    message: str = ""
    from_state: str | None = None
    to_state: str | None = None


class Change(Model):
    """One entry of the change feed: an entity written at a revision."""

    revision: int
    kind: str
    id: uuid.UUID
    op: str
    object: dict[str, Any] | None = None
