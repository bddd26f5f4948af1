"""/api/v1/services (revisions, traffic, replicas) and /api/v1/gateway/report for the gateways."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.serving import (
    GatewayReport,
    RouteTable,
    Service,
    ServiceCreated,
    ServiceSpec,
    ServiceUpdate,
    TrafficSplit,
)
from tessera.platform.auth import GatewayPrincipal, UserPrincipal
from tessera.platform.controllers.serving import handle_report
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import serving as service
from tessera.platform.services.traffic import Traffic

router = APIRouter(tags=["serving"], responses=COMMON)


def _traffic(request: Request) -> Traffic:
    traffic: Traffic = request.app.state.traffic
    return traffic


def _gateway_url(request: Request) -> str | None:
    configured: str | None = request.app.state.settings.gateway_url
    return configured or _traffic(request).gateway_url()


@router.post(
    "/services", status_code=status.HTTP_201_CREATED, response_model=ServiceCreated, responses=CONFLICT
)
async def create_service(
    req: ServiceSpec, db: DbDep, caller: UserPrincipal, request: Request
) -> ServiceCreated:
    """Create a service (revision 1 takes all traffic). Its token is in this response only."""
    created = await run_in_threadpool(service.create_service, db, caller, req)
    created.status.url = service.service_url(_gateway_url(request), created.name)
    return created


@router.get("/services", response_model=list[Service])
async def list_services(
    db: DbDep, caller: UserPrincipal, request: Request, project: str | None = None
) -> list[Service]:
    return await run_in_threadpool(service.list_services, db, caller, project, _gateway_url(request))


@router.get("/services/{name}", response_model=Service)
async def get_service(name: str, db: DbDep, caller: UserPrincipal, request: Request) -> Service:
    """A service with its revisions (traffic, scale, metrics) and replicas."""
    traffic = _traffic(request)
    return await run_in_threadpool(
        service.get_service, db, caller, name, _gateway_url(request), traffic.metrics
    )


@router.patch("/services/{name}", response_model=ServiceCreated, responses=CONFLICT)
async def update_service(name: str, req: ServiceUpdate, db: DbDep, caller: UserPrincipal) -> ServiceCreated:
    """A new revision with these changes; ``canary`` is its share of traffic (default all). The
    token is set only when this made a public service private."""
    return await run_in_threadpool(service.update_service, db, caller, name, req)


@router.put("/services/{name}/traffic", response_model=Service, responses=CONFLICT)
async def set_traffic(name: str, req: TrafficSplit, db: DbDep, caller: UserPrincipal) -> Service:
    return await run_in_threadpool(service.set_traffic, db, caller, name, req)


@router.post("/services/{name}/promote", response_model=Service, responses=CONFLICT)
async def promote(name: str, db: DbDep, caller: UserPrincipal, revision: int | None = None) -> Service:
    """All traffic to ``revision`` (default the latest)."""
    return await run_in_threadpool(service.promote, db, caller, name, revision)


@router.post("/services/{name}/rollback", response_model=Service, responses=CONFLICT)
async def rollback(name: str, db: DbDep, caller: UserPrincipal, revision: int | None = None) -> Service:
    """All traffic back to ``revision`` (default the newest before the latest)."""
    return await run_in_threadpool(service.rollback, db, caller, name, revision)


@router.post("/services/{name}/token", response_model=ServiceCreated, responses=CONFLICT)
async def rotate_token(name: str, db: DbDep, caller: UserPrincipal) -> ServiceCreated:
    """A new token for the service; the old one stops working at the gateways' next sync."""
    return await run_in_threadpool(service.rotate_token, db, caller, name)


@router.delete("/services/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_service(name: str, db: DbDep, caller: UserPrincipal) -> Response:
    await run_in_threadpool(service.delete_service, db, caller, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/gateway/report", response_model=RouteTable, responses=CONFLICT)
async def gateway_report(req: GatewayReport, db: DbDep, _: GatewayPrincipal, request: Request) -> RouteTable:
    """A gateway's traffic and readiness probes since its last report; the answer is every route."""
    return await run_in_threadpool(handle_report, db, _traffic(request), req)
