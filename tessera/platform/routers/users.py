"""/api/v1/users and /api/v1/tokens"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.identity import CreatedToken, CreateTokenRequest, CreateUserRequest, Token, User
from tessera.platform.auth import AdminPrincipal, UserPrincipal
from tessera.platform.deps import DbDep
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.services import identity as service

router = APIRouter(tags=["users"], responses=COMMON)


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=User, responses=CONFLICT)
async def create_user(req: CreateUserRequest, db: DbDep, _: AdminPrincipal) -> User:
    return await run_in_threadpool(service.create_user, db, req)


@router.get("/users", response_model=list[User])
async def list_users(db: DbDep, _: AdminPrincipal) -> list[User]:
    return await run_in_threadpool(service.list_users, db)


@router.get("/users/me", response_model=User)
async def whoami(db: DbDep, caller: UserPrincipal) -> User:
    return await run_in_threadpool(service.get_user, db, caller.user_name)


@router.get("/users/{name}", response_model=User)
async def get_user(name: str, db: DbDep, _: AdminPrincipal) -> User:
    return await run_in_threadpool(service.get_user, db, name)


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=CreatedToken, responses=CONFLICT)
async def create_token(req: CreateTokenRequest, db: DbDep, caller: UserPrincipal) -> CreatedToken:
    """Create a token; its secret is in this response only."""
    return await run_in_threadpool(service.create_token, db, caller, req)


@router.get("/tokens", response_model=list[Token])
async def list_tokens(db: DbDep, caller: UserPrincipal, user: str | None = None) -> list[Token]:
    return await run_in_threadpool(service.list_tokens, db, caller, user)


@router.post("/tokens/{token_id}/revoke", response_model=Token, responses=CONFLICT)
async def revoke_token(token_id: uuid.UUID, db: DbDep, caller: UserPrincipal) -> Token:
    return await run_in_threadpool(service.revoke_token, db, caller, token_id)
