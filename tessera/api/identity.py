"""Users, tokens, projects, memberships and roles."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field

from tessera.api.common import Duration, Meta, Model, Name


class Scope(enum.StrEnum):
    """What a token may be used for."""

    USER = "user"
    ADMIN = "admin"
    NODE = "node"
    METRICS = "metrics"
    GATEWAY = "gateway"  # the serving gateway: reports traffic, reads routes


class Role(enum.StrEnum):
    """A user's role in a project; each includes the ones below it."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "member": 1, "admin": 2}[self.value]


class User(Meta):
    name: Name
    email: str | None = None
    is_admin: bool = False
    disabled: bool = False


class CreateUserRequest(Model):
    name: Name
    email: str | None = Field(default=None, max_length=254)
    is_admin: bool = False


class Token(Meta):
    """A token as stored: never the secret, only its prefix."""

    name: str
    user: str
    scopes: list[Scope]
    prefix: str = Field(description="First characters of the secret, to tell tokens apart.")
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class CreateTokenRequest(Model):
    name: str = Field(min_length=1, max_length=63)
    user: Name | None = Field(default=None, description="Owner; defaults to the caller.")
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.USER], min_length=1)
    expires_in: Duration | None = Field(default=None, description="e.g. 30d; none = no expiry.")


class CreatedToken(Model):
    """Returned once at creation: the only time the secret is shown."""

    token: Token
    secret: str


class Membership(Model):
    user: Name
    role: Role


class Project(Meta):
    name: Name
    description: str = ""
    queues: list[Name] = Field(description="Queues this project's jobs may use.")
    default_queue: Name
    members: list[Membership] = Field(default_factory=list)


class CreateProjectRequest(Model):
    name: Name
    description: str = Field(default="", max_length=1000)
    queues: list[Name] = Field(default_factory=lambda: ["default"])
    default_queue: Name | None = None


class UpdateProjectRequest(Model):
    description: str | None = Field(default=None, max_length=1000)
    queues: list[Name] | None = None
    default_queue: Name | None = None


class SetMemberRequest(Model):
    role: Role


class SignIn(Model):
    """Web sign-in: a user token, exchanged for a session cookie (the token itself is not kept)."""

    token: str = Field(min_length=1, max_length=200)


class WebSession(Model):
    user: str
    is_admin: bool
    expires_at: datetime | None
    csrf_token: str = Field(description="Send as X-CSRF-Token on every write from the web UI.")
    projects: dict[str, str] = Field(default_factory=dict, description="Project -> your role.")
