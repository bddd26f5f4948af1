"""/api/v1/admin/check: the store's invariants (cluster admins only)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from tessera.api.admin import CheckReport
from tessera.platform.auth import AdminPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON
from tessera.platform.services.admincheck import check_store

router = APIRouter(prefix="/admin", tags=["admin"], responses=COMMON)


@router.get("/check", response_model=CheckReport)
async def check(db: DbDep, _: AdminPrincipal) -> CheckReport:
    """No GPU over-committed, nothing orphaned, states that agree (``ok`` false lists what is not)."""
    return await run_in_threadpool(check_store, db)
