"""Nodes that stop heartbeating turn NotReady; their jobs requeue, retry or end NodeLost."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from tessera.api.cluster import NodeState
from tessera.api.events import EventType
from tessera.platform.services import convert
from tessera.platform.services.common import emit, put
from tessera.platform.services.execution import node_lost
from tessera.platform.store.db import Database
from tessera.platform.store.rows import NodeRow
from tessera.platform.store.types import utcnow


def reconcile_nodes(db: Database, timeout: timedelta, now: datetime | None = None) -> list[str]:
    """Mark silent nodes NotReady and handle their jobs; returns the nodes marked."""
    now = now or utcnow()
    with db.read() as session:
        silent = [
            name
            for name, beat in session.execute(
                select(NodeRow.name, NodeRow.last_heartbeat_at).where(NodeRow.state == NodeState.READY.value)
            ).all()
            if beat is None or now - beat > timeout
        ]
    marked = []
    for name in silent:
        with db.write() as tx:
            row = tx.session.execute(select(NodeRow).where(NodeRow.name == name)).scalar_one_or_none()
            if row is None or row.state != NodeState.READY.value:
                continue
            if row.last_heartbeat_at is not None and now - row.last_heartbeat_at <= timeout:
                continue
            row.state = NodeState.NOT_READY.value
            put(tx, "node", row, convert.node)
            emit(
                tx,
                kind="node",
                object_id=row.id,
                object_name=name,
                type=EventType.WARNING,
                reason="NotReady",
                message=f"no heartbeat for more than {timeout.total_seconds():g}s",
            )
            node_lost(tx, name)
            marked.append(name)
    return marked
