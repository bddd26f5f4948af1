"""/healthz, /readyz (open) and /metrics (metrics-scope token)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tessera.platform.auth import MetricsPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import problems
from tessera.platform.store.migrate import is_current

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, db: DbDep) -> JSONResponse:
    """Ready when the database answers and its schema is at the newest migration; says whether
    this replica leads (runs the scheduler and controllers). Every replica is ready to serve."""
    try:
        current = await run_in_threadpool(is_current, db.engine)
    except Exception:  # any database failure means not ready; details go to the log only
        log.warning("readiness check failed", exc_info=True)
        return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, status_code=503)
    if not current:
        return JSONResponse({"status": "unavailable", "detail": "schema not migrated"}, status_code=503)
    return JSONResponse({"status": "ready", **leadership(request)})


def leadership(request: Request) -> dict[str, object]:
    """This replica's name, whether it holds the leader lease, and the lease's epoch."""
    leader = getattr(request.app.state, "leader", None)
    if leader is None:
        return {"leader": False, "replica": None, "epoch": 0}
    epoch = leader.epoch if leader.epoch is not None else leader.seen_epoch
    return {"leader": leader.is_leader, "replica": leader.replica, "epoch": epoch}


@router.get("/metrics", response_class=Response, responses=problems(401, 403))
async def metrics(request: Request, _: MetricsPrincipal) -> Response:
    """Prometheus metrics."""
    registry = request.app.state.metrics.registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
