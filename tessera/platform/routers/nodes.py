"""/api/v1/nodes"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.cluster import Node, RegisterNodeRequest
from tessera.api.common import Page
from tessera.api.datasets import CacheReports, LoadReport, LoadWork
from tessera.api.identity import Scope
from tessera.api.jobs import Job, TaskReports
from tessera.api.usage import Heartbeat, NodeEvents, NodeUsage
from tessera.platform.auth import AdminPrincipal, NodePrincipal, Principal, UserPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import dataloads
from tessera.platform.services import nodes as service
from tessera.platform.services import usage as usage_service
from tessera.platform.services.execution import apply_reports

router = APIRouter(prefix="/nodes", tags=["nodes"], responses=COMMON)


@router.post("", response_model=Node, responses=CONFLICT)
async def register_node(req: RegisterNodeRequest, db: DbDep, caller: NodePrincipal) -> Node:
    """Register or refresh a node (node-scope token)."""
    return await run_in_threadpool(service.register_node, db, req, caller)


@router.post("/{name}/heartbeat", response_model=Node, responses=CONFLICT)
async def heartbeat(name: str, db: DbDep, caller: NodePrincipal, req: Heartbeat | None = None) -> Node:
    """A sign of life; the body may carry the agent's latest measurement of its GPUs and slices."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    return await run_in_threadpool(service.heartbeat, db, name, req.usage if req else None)


@router.post("/{name}/events", response_model=dict[str, int], responses=CONFLICT)
async def node_events(name: str, req: NodeEvents, db: DbDep, caller: NodePrincipal) -> dict[str, int]:
    """Events the agent saw (SliceMemoryExceeded, Throttled, ...): on its jobs, or on the node."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    written = await run_in_threadpool(usage_service.record_events, db, name, req.events)
    return {"written": written}


@router.get("/{name}/usage", response_model=NodeUsage)
async def node_usage(name: str, db: DbDep, caller: UserPrincipal) -> NodeUsage:
    """Allocation beside real use per GPU and slice, as the node last measured it (`tessera top node`)."""
    return await run_in_threadpool(usage_service.node_usage, db, caller, name)


@router.get("/{name}/assignments", response_model=Page[Job])
async def assignments(name: str, db: DbDep, caller: NodePrincipal) -> Page[Job]:
    """Jobs with tasks on this node; watch ``kind=job`` from ``revision`` for changes."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    jobs, revision = await run_in_threadpool(service.assignments, db, name)
    return Page[Job](items=jobs, revision=revision)


@router.post("/{name}/reports", response_model=dict[str, int], responses=CONFLICT)
async def report_tasks(name: str, req: TaskReports, db: DbDep, caller: NodePrincipal) -> dict[str, int]:
    """Task states from the node's agent (idempotent; stale attempts are ignored)."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    applied = await run_in_threadpool(apply_reports, db, name, req.reports)
    return {"applied": applied}


@router.get("/{name}/loads", response_model=list[LoadWork])
async def node_loads(name: str, db: DbDep, caller: NodePrincipal) -> list[LoadWork]:
    """Dataset loads this node has a part in (with the sources' credentials: node agents only)."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    return [_for_caller(work, caller) for work in await run_in_threadpool(dataloads.node_work, db, name)]


@router.get("/{name}/datasets/{dataset_id}", response_model=LoadWork)
async def dataset_work(name: str, dataset_id: uuid.UUID, db: DbDep, caller: NodePrincipal) -> LoadWork:
    """A dataset a task on this node mounts: its files and its source's credentials (node agents only)."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    return _for_caller(await run_in_threadpool(dataloads.dataset_work, db, dataset_id, name), caller)


def _for_caller(work: LoadWork, caller: Principal) -> LoadWork:
    """A source's credentials go to node agents only: a cluster admin's user token may act as any
    node, but never reads a secret's values back (the secrets API promises they are never echoed)."""
    if Scope.NODE in caller.scopes:
        return work
    return work.model_copy(update={"secrets": {}})


@router.post("/{name}/loads/{load_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def report_load(
    name: str, load_id: uuid.UUID, req: LoadReport, db: DbDep, caller: NodePrincipal
) -> Response:
    """This node's progress on a load (the latest report wins)."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    await run_in_threadpool(dataloads.report_load, db, name, load_id, req)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/caches", response_model=dict[str, int | list[str]], responses=CONFLICT)
async def report_caches(
    name: str, req: CacheReports, db: DbDep, caller: NodePrincipal
) -> dict[str, int | list[str]]:
    """What this node's cache holds of each dataset, and how reads went; ``gone`` lists the
    datasets that were deleted (the node drops them)."""
    await run_in_threadpool(service.check_agent, db, caller, name)
    written, gone = await run_in_threadpool(dataloads.report_caches, db, name, req.caches)
    return {"written": written, "gone": gone}


@router.get("", response_model=list[Node])
async def list_nodes(db: DbDep, _: UserPrincipal) -> list[Node]:
    return await run_in_threadpool(service.list_nodes, db)


@router.get("/{name}", response_model=Node)
async def get_node(name: str, db: DbDep, _: UserPrincipal) -> Node:
    return await run_in_threadpool(service.get_node, db, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_node(name: str, db: DbDep, _: AdminPrincipal) -> Response:
    await run_in_threadpool(service.delete_node, db, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
