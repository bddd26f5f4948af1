"""Users, tokens, projects and memberships; first-start bootstrap."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.identity import (
    CreatedToken,
    CreateProjectRequest,
    CreateTokenRequest,
    CreateUserRequest,
    Project,
    Role,
    Scope,
    Token,
    UpdateProjectRequest,
    User,
)
from tessera.api.queues import DEFAULT_QUEUE
from tessera.platform.auth import Principal, hash_secret, new_secret
from tessera.platform.problems import Conflict, Forbidden, Invalid, NotFound
from tessera.platform.services import convert
from tessera.platform.services.common import put, remove
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import MembershipRow, ProjectRow, QueueRow, TokenRow, UserRow
from tessera.platform.store.types import utcnow

ADMIN_USER = "admin"
DEFAULT_PROJECT = "default"


# users ---------------------------------------------------------------------------------


def user_row(tx: Tx, name: str) -> UserRow:
    row = tx.session.execute(select(UserRow).where(UserRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no user named {name!r}", field="user")
    return row


def create_user(db: Database, req: CreateUserRequest) -> User:
    try:
        with db.write() as tx:
            return put(
                tx, "user", UserRow(name=req.name, email=req.email, is_admin=req.is_admin), convert.user
            )
    except IntegrityError:
        raise Conflict(f"a user named {req.name!r} already exists", field="name") from None


def list_users(db: Database) -> list[User]:
    with db.read() as session:
        return [convert.user(r) for r in session.execute(select(UserRow).order_by(UserRow.name)).scalars()]


def get_user(db: Database, name: str) -> User:
    with db.read() as session:
        row = session.execute(select(UserRow).where(UserRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no user named {name!r}", field="name")
        return convert.user(row)


# tokens --------------------------------------------------------------------------------


def create_token(db: Database, caller: Principal, req: CreateTokenRequest) -> CreatedToken:
    owner_name = req.user or caller.user_name
    if owner_name != caller.user_name and not caller.admin:
        raise Forbidden("only an admin may create tokens for another user")
    with db.write() as tx:
        owner = user_row(tx, owner_name)
        if Scope.ADMIN in req.scopes and not owner.is_admin:
            raise Invalid(
                f"user {owner_name!r} is not an admin, so a token for them cannot carry the admin scope",
                field="scopes",
            )
        if not caller.admin and not set(req.scopes) <= set(caller.scopes):
            raise Forbidden("a token can only carry scopes the creating token has")
        expires_at = utcnow() + req.expires_in if req.expires_in else None
        creator = tx.session.get(TokenRow, caller.token_id)
        if creator is not None and creator.expires_at is not None:
            # a token never outlives the token that created it
            expires_at = min(expires_at or creator.expires_at, creator.expires_at)
        secret = new_secret()
        row = TokenRow(
            name=req.name,
            user_id=owner.id,
            secret_hash=hash_secret(secret),
            prefix=secret[:10],
            scopes=[s.value for s in req.scopes],
            expires_at=expires_at,
        )
        token = put(tx, "token", row, lambda r: convert.token(r, owner.name))
    return CreatedToken(token=token, secret=secret)


def list_tokens(db: Database, caller: Principal, user: str | None = None) -> list[Token]:
    with db.read() as session:
        query = select(TokenRow, UserRow.name).join(UserRow, UserRow.id == TokenRow.user_id)
        if not caller.admin:
            query = query.where(TokenRow.user_id == caller.user_id)
        elif user:
            query = query.where(UserRow.name == user)
        rows = session.execute(query.order_by(TokenRow.created_at)).all()
        return [convert.token(t, name) for t, name in rows]


def revoke_token(db: Database, caller: Principal, token_id: uuid.UUID) -> Token:
    with db.write() as tx:
        row = tx.session.get(TokenRow, token_id)
        if row is None or (row.user_id != caller.user_id and not caller.admin):
            raise NotFound(f"no token with id {token_id}", field="id")
        owner = tx.session.get(UserRow, row.user_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return put(tx, "token", row, lambda r: convert.token(r, owner.name if owner else "?"))


# projects ------------------------------------------------------------------------------


def members(session: Session, project_id: uuid.UUID) -> list[tuple[str, str]]:
    """(user, role) pairs of a project."""
    return [
        (name, role)
        for name, role in session.execute(
            select(UserRow.name, MembershipRow.role)
            .join(MembershipRow, MembershipRow.user_id == UserRow.id)
            .where(MembershipRow.project_id == project_id)
        ).all()
    ]


def project_row(tx: Tx, name: str, field: str = "name") -> ProjectRow:
    row = tx.session.execute(select(ProjectRow).where(ProjectRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no project named {name!r}", field=field)
    return row


def _check_queues(tx: Tx, queues: list[str], default_queue: str) -> None:
    known = set(tx.session.execute(select(QueueRow.name)).scalars())
    unknown = [q for q in queues if q not in known]
    if unknown:
        raise Invalid(f"unknown queue(s) {unknown}; existing queues: {sorted(known)}", field="queues")
    if default_queue not in queues:
        raise Invalid(
            f"default_queue {default_queue!r} must be one of queues {queues}", field="default_queue"
        )


def create_project(db: Database, req: CreateProjectRequest) -> Project:
    default_queue = req.default_queue or (req.queues[0] if req.queues else DEFAULT_QUEUE)
    try:
        with db.write() as tx:
            _check_queues(tx, req.queues, default_queue)
            row = ProjectRow(
                name=req.name, description=req.description, queues=req.queues, default_queue=default_queue
            )
            return put(tx, "project", row, lambda r: convert.project(r, []))
    except IntegrityError:
        raise Conflict(f"a project named {req.name!r} already exists", field="name") from None


def update_project(db: Database, name: str, req: UpdateProjectRequest) -> Project:
    with db.write() as tx:
        row = project_row(tx, name)
        queues = req.queues if req.queues is not None else row.queues
        default_queue = req.default_queue or row.default_queue
        if req.queues is not None and req.default_queue is None and default_queue not in queues:
            default_queue = queues[0]
        _check_queues(tx, queues, default_queue)
        row.queues, row.default_queue = list(queues), default_queue
        if req.description is not None:
            row.description = req.description
        return put(tx, "project", row, lambda r: convert.project(r, members(tx.session, r.id)))


def list_projects(db: Database, caller: Principal) -> list[Project]:
    visible = caller.visible_projects()
    with db.read() as session:
        rows = session.execute(select(ProjectRow).order_by(ProjectRow.name)).scalars().all()
        return [
            convert.project(r, members(session, r.id)) for r in rows if visible is None or r.name in visible
        ]


def get_project(db: Database, caller: Principal, name: str) -> Project:
    caller.require(name, Role.VIEWER)
    with db.read() as session:
        row = session.execute(select(ProjectRow).where(ProjectRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no project named {name!r}", field="name")
        return convert.project(row, members(session, row.id))


def set_member(db: Database, caller: Principal, project: str, user: str, role: Role | None) -> Project:
    """Grant ``role`` to ``user`` in ``project`` (None removes them). Needs project admin."""
    caller.require(project, Role.ADMIN)
    with db.write() as tx:
        prow = project_row(tx, project)
        urow = user_row(tx, user)
        existing = tx.session.execute(
            select(MembershipRow).where(MembershipRow.project_id == prow.id, MembershipRow.user_id == urow.id)
        ).scalar_one_or_none()
        if role is None:
            if existing is None:
                raise NotFound(f"user {user!r} is not a member of {project!r}", field="user")
            remove(tx, "membership", existing)
        elif existing is None:
            tx.session.add(
                MembershipRow(project_id=prow.id, user_id=urow.id, role=role.value, revision=tx.revision)
            )
        else:
            existing.role = role.value
            tx.stamp(existing)
        tx.session.flush()
        return put(tx, "project", prow, lambda r: convert.project(r, members(tx.session, r.id)))


# bootstrap -----------------------------------------------------------------------------


def bootstrap(db: Database) -> str | None:
    """Create the default queue, project and admin user if missing.

    Returns a new admin token's secret when the admin has no live admin token
    (first start), else None. Idempotent.
    """
    from tessera.api.queues import QueueSpec

    with db.write() as tx:
        session = tx.session
        if session.execute(select(QueueRow).where(QueueRow.name == DEFAULT_QUEUE)).first() is None:
            put(
                tx,
                "queue",
                QueueRow(
                    name=DEFAULT_QUEUE,
                    parent=None,
                    spec=QueueSpec(description="default queue, no quota limit").model_dump(mode="json"),
                ),
                convert.queue,
            )
        if session.execute(select(ProjectRow).where(ProjectRow.name == DEFAULT_PROJECT)).first() is None:
            put(
                tx,
                "project",
                ProjectRow(
                    name=DEFAULT_PROJECT,
                    description="default project",
                    queues=[DEFAULT_QUEUE],
                    default_queue=DEFAULT_QUEUE,
                ),
                lambda r: convert.project(r, []),
            )
        admin = session.execute(select(UserRow).where(UserRow.name == ADMIN_USER)).scalar_one_or_none()
        if admin is None:
            admin = UserRow(name=ADMIN_USER, is_admin=True)
            put(tx, "user", admin, convert.user)
        has_token = session.execute(
            select(TokenRow.id).where(TokenRow.user_id == admin.id, TokenRow.revoked_at.is_(None))
        ).first()
        if has_token is not None:
            return None
        secret = new_secret()
        row = TokenRow(
            name="bootstrap-admin",
            user_id=admin.id,
            secret_hash=hash_secret(secret),
            prefix=secret[:10],
            scopes=[Scope.ADMIN.value, Scope.USER.value],
        )
        put(tx, "token", row, lambda r: convert.token(r, ADMIN_USER))
        return secret
