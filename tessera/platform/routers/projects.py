"""/api/v1/projects"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.identity import CreateProjectRequest, Project, SetMemberRequest, UpdateProjectRequest
from tessera.platform.auth import AdminPrincipal, UserPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import identity as service

router = APIRouter(prefix="/projects", tags=["projects"], responses=COMMON)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Project, responses=CONFLICT)
async def create_project(req: CreateProjectRequest, db: DbDep, _: AdminPrincipal) -> Project:
    return await run_in_threadpool(service.create_project, db, req)


@router.get("", response_model=list[Project])
async def list_projects(db: DbDep, caller: UserPrincipal) -> list[Project]:
    return await run_in_threadpool(service.list_projects, db, caller)


@router.get("/{name}", response_model=Project)
async def get_project(name: str, db: DbDep, caller: UserPrincipal) -> Project:
    return await run_in_threadpool(service.get_project, db, caller, name)


@router.patch("/{name}", response_model=Project, responses=CONFLICT)
async def update_project(name: str, req: UpdateProjectRequest, db: DbDep, _: AdminPrincipal) -> Project:
    return await run_in_threadpool(service.update_project, db, name, req)


@router.put("/{name}/members/{user}", response_model=Project, responses=CONFLICT)
async def set_member(
    name: str, user: str, req: SetMemberRequest, db: DbDep, caller: UserPrincipal
) -> Project:
    """Grant a role (viewer, member, admin) in the project; needs project admin."""
    return await run_in_threadpool(service.set_member, db, caller, name, user, req.role)


@router.delete("/{name}/members/{user}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def remove_member(name: str, user: str, db: DbDep, caller: UserPrincipal) -> Response:
    await run_in_threadpool(service.set_member, db, caller, name, user, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
