"""/api/v1/queues"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.queues import CreateQueueRequest, Queue, QueueUsage, UpdateQueueRequest
from tessera.platform.auth import AdminPrincipal, UserPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import queues as service

router = APIRouter(prefix="/queues", tags=["queues"], responses=COMMON)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Queue, responses=CONFLICT)
async def create_queue(req: CreateQueueRequest, db: DbDep, _: AdminPrincipal) -> Queue:
    return await run_in_threadpool(service.create_queue, db, req)


@router.get("", response_model=list[Queue])
async def list_queues(db: DbDep, _: UserPrincipal) -> list[Queue]:
    return await run_in_threadpool(service.list_queues, db)


@router.get("/usage", response_model=list[QueueUsage])
async def queue_usage(db: DbDep, _: UserPrincipal) -> list[QueueUsage]:
    """Every queue's usage against its quota, with dominant and fair shares (as the scheduler counts)."""
    from tessera.platform.services.queueusage import queue_usage as usage

    return await run_in_threadpool(usage, db)


@router.get("/{name}", response_model=Queue)
async def get_queue(name: str, db: DbDep, _: UserPrincipal) -> Queue:
    return await run_in_threadpool(service.get_queue, db, name)


@router.patch("/{name}", response_model=Queue, responses=CONFLICT)
async def update_queue(name: str, req: UpdateQueueRequest, db: DbDep, _: AdminPrincipal) -> Queue:
    return await run_in_threadpool(service.update_queue, db, name, req)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_queue(name: str, db: DbDep, _: AdminPrincipal) -> Response:
    await run_in_threadpool(service.delete_queue, db, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
