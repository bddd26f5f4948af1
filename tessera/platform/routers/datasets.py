"""/api/v1/datasets (with their loads) and /api/v1/secrets"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.datasets import (
    CreateDatasetRequest,
    CreateLoadRequest,
    CreateSecretRequest,
    DataLoad,
    Dataset,
    Secret,
)
from tessera.platform.auth import UserPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import datasets as service

router = APIRouter(tags=["datasets"], responses=COMMON)


@router.post("/datasets", status_code=status.HTTP_201_CREATED, response_model=Dataset, responses=CONFLICT)
async def create_dataset(req: CreateDatasetRequest, db: DbDep, caller: UserPrincipal) -> Dataset:
    """Create a dataset; its source is listed in the background (status.phase, events)."""
    return await run_in_threadpool(service.create_dataset, db, caller, req)


@router.get("/datasets", response_model=list[Dataset])
async def list_datasets(db: DbDep, caller: UserPrincipal, project: str | None = None) -> list[Dataset]:
    return await run_in_threadpool(service.list_datasets, db, caller, project)


@router.get("/datasets/{name}", response_model=Dataset)
async def get_dataset(name: str, db: DbDep, caller: UserPrincipal, project: str = "default") -> Dataset:
    return await run_in_threadpool(service.get_dataset, db, caller, project, name)


@router.delete("/datasets/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_dataset(name: str, db: DbDep, caller: UserPrincipal, project: str = "default") -> Response:
    await run_in_threadpool(service.delete_dataset, db, caller, project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/datasets/{name}/loads", status_code=status.HTTP_201_CREATED, response_model=DataLoad, responses=CONFLICT
)
async def create_load(
    name: str,
    db: DbDep,
    caller: UserPrincipal,
    req: CreateLoadRequest | None = None,
    project: str = "default",
) -> DataLoad:
    """Prewarm node caches now (a load already under way is returned instead)."""
    return await run_in_threadpool(service.create_load, db, caller, project, name, req or CreateLoadRequest())


@router.get("/datasets/{name}/loads", response_model=list[DataLoad])
async def list_loads(name: str, db: DbDep, caller: UserPrincipal, project: str = "default") -> list[DataLoad]:
    return await run_in_threadpool(service.list_loads, db, caller, project, name)


@router.post("/secrets", status_code=status.HTTP_201_CREATED, response_model=Secret, responses=CONFLICT)
async def create_secret(req: CreateSecretRequest, db: DbDep, caller: UserPrincipal) -> Secret:
    """Store values a dataset's source is read with; they are never returned."""
    return await run_in_threadpool(service.create_secret, db, caller, req)


@router.get("/secrets", response_model=list[Secret])
async def list_secrets(db: DbDep, caller: UserPrincipal, project: str = "default") -> list[Secret]:
    return await run_in_threadpool(service.list_secrets, db, caller, project)


@router.delete("/secrets/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_secret(name: str, db: DbDep, caller: UserPrincipal, project: str = "default") -> Response:
    await run_in_threadpool(service.delete_secret, db, caller, project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
