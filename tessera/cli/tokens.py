"""tessera token create|list|revoke: API tokens, with scopes and expiry; a secret is shown once."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from pydantic import ValidationError

from tessera.api.identity import CreateTokenRequest, Scope, Token
from tessera.cli.output import Format, age, dump, fail, out, server_errors, table
from tessera.client import Client

token_app = typer.Typer(
    help="API tokens: create (the secret is shown once), list, revoke.", no_args_is_help=True
)
OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml.")]


def _state(t: Token) -> str:
    if t.revoked_at is not None:
        return f"revoked {age(t.revoked_at)} ago"
    if t.expires_at is not None:
        return f"expires {t.expires_at:%Y-%m-%d %H:%M}Z"
    return "active"


@token_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name to tell the token apart, e.g. laptop or ci.")],
    user: Annotated[str | None, typer.Option(help="Owner (admins only); default you.")] = None,
    scope: Annotated[
        list[Scope] | None, typer.Option("--scope", help="user (default), admin, node, gateway or metrics.")
    ] = None,
    expires_in: Annotated[str | None, typer.Option(help="e.g. 30d or 12h; default never.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Create a token and print its secret: the only time it is shown."""
    try:
        req = CreateTokenRequest(name=name, user=user, scopes=scope or [Scope.USER], expires_in=expires_in)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = {"expires_in": "--expires-in", "name": "NAME", "user": "--user"}.get(str(first["loc"][0]), "")
        fail(f"{field}: {first['msg']}")
    with server_errors(), Client() as client:
        created = client.create_token(req)
    if output in (Format.JSON, Format.YAML):
        dump(created, output)
        return
    scopes = ",".join(s.value for s in created.token.scopes)
    out.print(f"token {created.token.name} ({created.token.id}) for {created.token.user}, scopes {scopes}, "
              f"{_state(created.token)}", highlight=False)  # fmt: skip
    out.print(created.secret, highlight=False, soft_wrap=True)


@token_app.command("list")
def list_tokens(
    user: Annotated[str | None, typer.Option(help="Only this user's (admins see everyone's).")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Tokens you own (every token, for an admin): never their secrets, only a prefix."""
    with server_errors(), Client() as client:
        tokens = client.list_tokens(user)
    if output in (Format.JSON, Format.YAML):
        dump(tokens, output)
        return
    rows = [
        [str(t.id), t.name, t.user, ",".join(s.value for s in t.scopes), t.prefix + "…",
         f"{age(t.last_used_at)} ago" if t.last_used_at else "never", _state(t)]
        for t in tokens
    ]  # fmt: skip
    table(["ID", "NAME", "USER", "SCOPES", "PREFIX", "LAST USED", "STATE"], rows)


@token_app.command("revoke")
def revoke(
    token: Annotated[str, typer.Argument(help="The token's id, or its name when that names one of yours.")],
) -> None:
    """Revoke a token: every request with it is refused (401) from now on."""
    with server_errors(), Client() as client:
        try:
            token_id = uuid.UUID(token)
        except ValueError:
            named = [t for t in client.list_tokens() if t.name == token and t.revoked_at is None]
            if len(named) != 1:
                fail(
                    f"{len(named) or 'no'} active token(s) named {token!r}; give the id (tessera token list)"
                )
            token_id = named[0].id
        revoked = client.revoke_token(token_id)
    out.print(f"token {revoked.name} ({revoked.id}) revoked", highlight=False)
