"""/healthz, /readyz (open) and /metrics (metrics-scope token)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tessera.platform.auth import MetricsPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.store.migrate import is_current

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(db: DbDep) -> JSONResponse:
    """Ready when the database answers and its schema is at the newest migration."""
    try:
        current = await run_in_threadpool(is_current, db.engine)
    except Exception:  # any database failure means not ready; details go to the log only
        log.warning("readiness check failed", exc_info=True)
        return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, status_code=503)
    if not current:
        return JSONResponse({"status": "unavailable", "detail": "schema not migrated"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, _: MetricsPrincipal) -> Response:
    """Prometheus metrics."""
    registry = request.app.state.metrics.registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
