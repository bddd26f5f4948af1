"""Nodes that stop heartbeating turn NotReady; their jobs requeue, retry or end NodeLost."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from tessera.api.cluster import NodeState
from tessera.api.events import EventType
from tessera.platform.services import convert
from tessera.platform.services.common import emit, put
from tessera.platform.services.execution import jobs_on, node_lost
from tessera.platform.store.db import Database
from tessera.platform.store.rows import NodeRow
from tessera.platform.store.types import utcnow


def reconcile_nodes(
    db: Database, timeout: timedelta, now: datetime | None = None, watching_since: datetime | None = None
) -> list[str]:
    """Mark silent nodes NotReady and handle their jobs; returns the nodes marked.

    ``watching_since`` is when this control plane started: a node is only judged
    silent for time it could have been heard, so a control plane that was itself
    down for a while does not declare every node lost at its first pass.
    """
    moment = now or utcnow()

    def silent_for(beat: datetime | None) -> timedelta:
        heard = max((t for t in (beat, watching_since) if t is not None), default=None)
        return moment - heard if heard is not None else timeout * 2

    with db.read() as session:
        rows = session.execute(select(NodeRow.name, NodeRow.state, NodeRow.last_heartbeat_at)).all()
    silent = [
        name for name, state, beat in rows if state == NodeState.READY.value and silent_for(beat) > timeout
    ]
    if any(state == NodeState.NOT_READY.value for _, state, _ in rows):
        # jobs bound to a node just before it went NotReady are moved on too (cheap when none)
        with db.read() as session:
            stranded = [
                name
                for name, state, _ in rows
                if state == NodeState.NOT_READY.value and jobs_on(session, name)
            ]
        if stranded:
            with db.write() as tx:
                for name in stranded:
                    node_lost(tx, name)
    marked = []
    for name in silent:
        with db.write() as tx:
            row = tx.session.execute(select(NodeRow).where(NodeRow.name == name)).scalar_one_or_none()
            if (
                row is None
                or row.state != NodeState.READY.value
                or silent_for(row.last_heartbeat_at) <= timeout
            ):
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
