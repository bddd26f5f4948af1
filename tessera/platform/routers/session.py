"""/api/v1/session: the web UI's sign-in. A user token is exchanged for a session: a short-lived
token of the same user and scopes, held in an HttpOnly, SameSite=Strict cookie; writes made with
it must carry the CSRF header (see auth.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.identity import Scope, SignIn, WebSession
from tessera.platform.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    UserPrincipal,
    authenticate,
    csrf_token,
    hash_secret,
    new_secret,
)
from tessera.platform.deps import DbDep
from tessera.platform.problems import Forbidden
from tessera.platform.routers.responses import COMMON, CONFLICT
from tessera.platform.store.db import Database
from tessera.platform.store.rows import TokenRow
from tessera.platform.store.types import utcnow

router = APIRouter(prefix="/session", tags=["session"], responses=COMMON)
SESSION_TTL = timedelta(hours=12)


def _open(db: Database, token: str) -> tuple[str, WebSession]:
    principal = authenticate(db, token)
    scopes = sorted(s.value for s in principal.scopes & {Scope.USER, Scope.ADMIN})
    if Scope.USER.value not in scopes and not principal.admin:
        raise Forbidden("sign in with a user token (node, gateway and metrics tokens cannot)")
    secret = new_secret()
    expires = utcnow() + SESSION_TTL
    with db.write() as tx:
        source = tx.session.get(TokenRow, principal.token_id)
        if source is not None and source.expires_at is not None:
            expires = min(expires, source.expires_at)  # never outlives the token it came from
        tx.session.add(
            TokenRow(
                name="web-session",
                user_id=principal.user_id,
                secret_hash=hash_secret(secret),
                prefix=secret[:10],
                scopes=scopes or [Scope.USER.value],
                expires_at=expires,
                revision=tx.revision,
            )
        )
    return secret, _info(principal, secret, expires)


def _info(principal: Principal, secret: str, expires: datetime | None) -> WebSession:
    return WebSession(
        user=principal.user_name,
        is_admin=principal.admin,
        expires_at=expires,
        csrf_token=csrf_token(secret),
        projects={name: role.value for name, role in principal.roles().items()},
    )


def _cookies(response: Response, request: Request, secret: str, max_age: int) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, secret, max_age=max_age, httponly=True, samesite="strict", secure=secure, path="/"
    )
    # readable by the page (it sends it back as X-CSRF-Token); useless to another site
    response.set_cookie(
        CSRF_COOKIE, csrf_token(secret), max_age=max_age, samesite="strict", secure=secure, path="/"
    )


@router.post("", response_model=WebSession, responses=CONFLICT)
async def sign_in(req: SignIn, db: DbDep, request: Request, response: Response) -> WebSession:
    """Exchange a user token for a web session (cookies); the answer carries the CSRF token."""
    secret, info = await run_in_threadpool(_open, db, req.token)
    _cookies(response, request, secret, int(SESSION_TTL.total_seconds()))
    return info


@router.get("", response_model=WebSession)
async def whoami(caller: UserPrincipal, request: Request, db: DbDep) -> WebSession:
    """The signed-in session (401 if none)."""
    secret = request.cookies.get(SESSION_COOKIE) or ""
    row = await run_in_threadpool(lambda: _token(db, caller))
    return await run_in_threadpool(_info, caller, secret, row.expires_at if row else None)


def _token(db: Database, caller: Principal) -> TokenRow | None:
    with db.read() as session:
        return session.get(TokenRow, caller.token_id)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def sign_out(caller: UserPrincipal, db: DbDep) -> Response:
    """End the session: its token is revoked and the cookies cleared."""

    def revoke() -> None:
        with db.write() as tx:
            row = tx.session.get(TokenRow, caller.token_id)
            if row is not None and row.name == "web-session" and row.revoked_at is None:
                row.revoked_at = utcnow()
                tx.stamp(row)

    await run_in_threadpool(revoke)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response
