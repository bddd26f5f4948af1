"""Authentication (hashed tokens with scopes and expiry) and authorization (project roles).

Every route declares one :func:`authorize` dependency naming the token scopes
it accepts; project-level roles are then checked through the returned
:class:`Principal` (``principal.require(project, Role.MEMBER)``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from tessera.api.identity import Role, Scope
from tessera.platform.deps import DbDep
from tessera.platform.problems import Forbidden, Unauthorized
from tessera.platform.store.db import Database
from tessera.platform.store.rows import MembershipRow, ProjectRow, TokenRow, UserRow
from tessera.platform.store.types import utcnow

TOKEN_PREFIX = "tsr_"
_LAST_USED_EVERY = timedelta(minutes=5)
# declares the bearer scheme in OpenAPI; _bearer() below does the checking and the 401s
_BEARER = HTTPBearer(auto_error=False, description="A Tessera token: tsr_...")


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Tokens are 256-bit random, so one SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Principal:
    """Who is calling: the token's user, its scopes, and (lazily) their project roles."""

    user_id: uuid.UUID
    user_name: str
    is_admin: bool
    scopes: frozenset[Scope]
    token_id: uuid.UUID
    _db: Database = field(repr=False)
    _roles: dict[str, Role] | None = field(default=None, repr=False)

    @property
    def admin(self) -> bool:
        """Cluster admin: an admin user holding an admin-scope token."""
        return self.is_admin and Scope.ADMIN in self.scopes

    def roles(self) -> dict[str, Role]:
        """Project name -> role for this user."""
        if self._roles is None:
            with self._db.read() as session:
                rows = session.execute(
                    select(ProjectRow.name, MembershipRow.role)
                    .join(MembershipRow, MembershipRow.project_id == ProjectRow.id)
                    .where(MembershipRow.user_id == self.user_id)
                ).all()
            self._roles = {name: Role(role) for name, role in rows}
        return self._roles

    def role_in(self, project: str) -> Role | None:
        if self.admin:
            return Role.ADMIN
        return self.roles().get(project)

    def require(self, project: str, role: Role) -> None:
        """Raise 403 unless the caller holds at least ``role`` in ``project``."""
        held = self.role_in(project)
        if held is None:
            raise Forbidden(f"you are not a member of project {project!r}")
        if held.rank < role.rank:
            raise Forbidden(f"this needs role {role} in project {project!r}; you are {held}")

    def visible_projects(self) -> set[str] | None:
        """Projects whose resources the caller may see; None means all (admin)."""
        return None if self.admin else set(self.roles())


SESSION_COOKIE = "tessera_session"
CSRF_COOKIE = "tessera_csrf"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a web session: derived from its secret, so nothing more is stored."""
    return hmac.new(session_secret.encode(), b"tessera-csrf", hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    session = request.cookies.get(SESSION_COOKIE)
    if session and not header:
        # the web UI: an HttpOnly session cookie; a write must also carry the CSRF header, which
        # another site's page cannot read or forge (and SameSite=Strict keeps the cookie home)
        if request.method not in _SAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, ""), csrf_token(session)
        ):
            raise Forbidden(f"a write from a web session needs the {CSRF_HEADER} header (sign in again)")
        return session
    raise Unauthorized(
        "missing token: send 'Authorization: Bearer <token>' "
        "(the CLI reads TESSERA_TOKEN or ~/.tessera/credentials.json)"
    )


def authenticate(db: Database, secret: str, now: datetime | None = None) -> Principal:
    """Resolve a bearer secret into a principal, or raise 401."""
    now = now or utcnow()
    with db.read() as session:
        found = session.execute(
            select(TokenRow, UserRow)
            .join(UserRow, UserRow.id == TokenRow.user_id)
            .where(TokenRow.secret_hash == hash_secret(secret))
        ).first()
    if found is None:
        raise Unauthorized("token not recognised: it is wrong or has been deleted")
    token, user = found
    if token.revoked_at is not None:
        raise Unauthorized(f"token {token.name!r} was revoked at {token.revoked_at.isoformat()}")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized(f"token {token.name!r} expired at {token.expires_at.isoformat()}")
    if user.disabled:
        raise Unauthorized(f"user {user.name!r} is disabled")
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_EVERY:
        _touch(db, token.id, now)
    return Principal(
        user_id=user.id,
        user_name=user.name,
        is_admin=user.is_admin,
        scopes=frozenset(Scope(s) for s in token.scopes),
        token_id=token.id,
        _db=db,
    )


def _touch(db: Database, token_id: uuid.UUID, now: datetime) -> None:
    with db.write() as tx:
        row = tx.session.get(TokenRow, token_id)
        if row is not None:
            row.last_used_at = now
            tx.stamp(row)


class authorize:  # noqa: N801 - used like a function in Depends(authorize(...))
    """The one auth dependency on every route: a valid token with an accepted scope."""

    def __init__(self, *scopes: Scope) -> None:
        self.scopes = frozenset(scopes) or frozenset({Scope.USER})

    def __call__(
        self,
        request: Request,
        db: DbDep,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Principal:
        principal = authenticate(db, _bearer(request))
        # an admin-scope token of an admin user may call anything; the admin
        # scope is honoured only for admin users
        if principal.admin or principal.scopes & (self.scopes - {Scope.ADMIN}):
            request.state.principal = principal
            return principal
        wanted = ", ".join(sorted(self.scopes))
        held = ", ".join(sorted(principal.scopes))
        raise Forbidden(f"this endpoint needs a token with scope {wanted}; yours has {held}")


UserPrincipal = Annotated[Principal, Depends(authorize(Scope.USER))]
AdminPrincipal = Annotated[Principal, Depends(authorize(Scope.ADMIN))]
NodePrincipal = Annotated[Principal, Depends(authorize(Scope.NODE))]
MetricsPrincipal = Annotated[Principal, Depends(authorize(Scope.METRICS))]
GatewayPrincipal = Annotated[Principal, Depends(authorize(Scope.GATEWAY))]
WatchPrincipal = Annotated[Principal, Depends(authorize(Scope.USER, Scope.NODE))]
