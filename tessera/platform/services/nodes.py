"""Nodes: registration and heartbeats from node agents."""

from __future__ import annotations

from sqlalchemy import select

from tessera.api.cluster import Node, NodeCondition, NodeInventory, NodeState, RegisterNodeRequest
from tessera.api.events import EventType
from tessera.api.jobs import Job
from tessera.api.usage import NodeUsage
from tessera.platform.auth import Principal
from tessera.platform.problems import Forbidden, NotFound
from tessera.platform.services import convert
from tessera.platform.services.common import emit, put, remove
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import JobRow, NodeRow, RevisionRow, TaskRow
from tessera.platform.store.types import utcnow


def check_agent(db: Database, caller: Principal, name: str) -> None:
    """A node-scope token acts only as nodes its user registered (admins act as any)."""
    if caller.admin:
        return
    with db.read() as session:
        owner = session.execute(select(NodeRow.agent_user_id).where(NodeRow.name == name)).first()
    if owner is not None and owner[0] is not None and owner[0] != caller.user_id:
        raise Forbidden(f"node {name!r} belongs to another agent's credentials; use that node's token")


def register_node(db: Database, req: RegisterNodeRequest, caller: Principal | None = None) -> Node:
    """Create or refresh a node (agents call this at every start)."""
    if caller is not None:
        check_agent(db, caller, req.name)
    with db.write() as tx:
        row = tx.session.execute(select(NodeRow).where(NodeRow.name == req.name)).scalar_one_or_none()
        joined = row is None
        if row is None:
            row = NodeRow(name=req.name)
        before = _registration(row)
        old_conditions = {c["type"]: c for c in (row.inventory or {}).get("conditions", [])}
        if caller is not None and not caller.admin and row.agent_user_id is None:
            row.agent_user_id = caller.user_id
        row.labels = dict(req.labels)
        row.inventory = req.inventory.model_dump(mode="json")
        row.state = NodeState.READY.value
        row.last_heartbeat_at = utcnow()
        row.agent_url = req.agent_url
        row.agent_secret = req.agent_secret
        node = put(tx, "node", row, convert.node)
        gpus = len(req.inventory.gpus)
        new_conditions = {c.type for c in req.inventory.conditions}
        only_conditions = _registration(row) == before and new_conditions != set(old_conditions)
        if joined or not only_conditions:  # an agent telling of a condition is no registration
            emit(
                tx,
                kind="node",
                object_id=row.id,
                object_name=row.name,
                reason="Joined" if joined else "Registered",
                message=f"{gpus} GPU(s){' (simulated)' if req.inventory.simulated else ''}",
            )
        _condition_events(tx, row, old_conditions, req.inventory.conditions)
        return node


def _registration(row: NodeRow) -> tuple[object, ...]:
    """What a registration says about a node, but for its conditions."""
    inventory = {k: v for k, v in (row.inventory or {}).items() if k != "conditions"}
    return (row.labels, inventory, row.agent_url, row.agent_secret, row.state)


def _condition_events(
    tx: Tx, row: NodeRow, old: dict[str, dict[str, object]], new: list[NodeCondition]
) -> None:
    """A Warning event when a condition appears (e.g. LogDiskFull), a Normal one when it clears."""
    for condition in new:
        if condition.type not in old:
            emit(
                tx,
                kind="node",
                object_id=row.id,
                object_name=row.name,
                reason=condition.type,
                message=condition.message,
                type=EventType.WARNING,
            )
    for gone in sorted(set(old) - {c.type for c in new}):
        emit(tx, kind="node", object_id=row.id, object_name=row.name, reason=f"{gone}Cleared", message="")


def heartbeat(db: Database, name: str, usage: NodeUsage | None = None) -> Node:
    """A sign of life, with the agent's latest measurement of its GPUs when it sends one."""
    from tessera.platform.services.usage import store_usage

    with db.write() as tx:
        row = _row(tx, name)
        row.last_heartbeat_at = utcnow()
        if usage is not None:
            store_usage(tx, row, usage.model_copy(update={"node": name}))
        if row.state == NodeState.NOT_READY.value:
            row.state = NodeState.READY.value
        return put(tx, "node", row, convert.node)


def _row(tx: Tx, name: str) -> NodeRow:
    row = tx.session.execute(select(NodeRow).where(NodeRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no node named {name!r}; register it first", field="name")
    return row


def list_nodes(db: Database) -> list[Node]:
    with db.read() as session:
        return [convert.node(r) for r in session.execute(select(NodeRow).order_by(NodeRow.name)).scalars()]


def get_node(db: Database, name: str) -> Node:
    with db.read() as session:
        row = session.execute(select(NodeRow).where(NodeRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no node named {name!r}", field="name")
        return convert.node(row)


def delete_node(db: Database, name: str) -> None:
    with db.write() as tx:
        remove(tx, "node", _row(tx, name))


def inventories(tx: Tx) -> list[NodeInventory]:
    """Inventories of every registered node (for submit-time feasibility)."""
    return [NodeInventory.model_validate(i) for i in tx.session.execute(select(NodeRow.inventory)).scalars()]


def assignments(db: Database, name: str) -> tuple[list[Job], int]:
    """Every job with a task on node ``name`` (any state), and the revision read at."""
    from tessera.platform.services.jobs import render_job

    with db.read() as session:
        revision = session.execute(select(RevisionRow.revision)).scalar_one()
        if session.execute(select(NodeRow.id).where(NodeRow.name == name)).first() is None:
            raise NotFound(f"no node named {name!r}; register it first", field="name")
        job_ids = select(TaskRow.job_id).where(TaskRow.node == name).distinct()
        rows = session.execute(select(JobRow).where(JobRow.id.in_(job_ids))).scalars().all()
        return [render_job(session, row) for row in rows], revision
