"""`tessera token` against a real control plane: a secret shown once, listed by prefix only,
refused once revoked; bad input names its option."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import Server, start
from tests.pg import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start(tmp_path / "home", free_port())
    yield srv
    srv.stop()


def test_create_list_use_and_revoke(server: Server) -> None:
    made = server.run("token", "create", "laptop", "--expires-in", "30d", "-o", "json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    secret, token = created["secret"], created["token"]
    assert secret.startswith("tsr_") and token["expires_at"] and token["scopes"] == ["user"]
    listed = server.run("token", "list")
    assert listed.returncode == 0 and "laptop" in listed.stdout and "expires" in listed.stdout
    assert secret not in listed.stdout and secret[-16:] not in listed.stdout
    # the new token works, and stops working once revoked (by name)
    assert server.run("queue", "list", TESSERA_TOKEN=secret).returncode == 0
    revoked = server.run("token", "revoke", "laptop")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    refused = server.run("queue", "list", TESSERA_TOKEN=secret)
    assert refused.returncode != 0 and "revoked" in refused.stderr, refused.stderr
    states = {
        t["name"]: t["revoked_at"] for t in json.loads(server.run("token", "list", "-o", "json").stdout)
    }
    assert states["laptop"] is not None
    # revoking by a name no active token has says so; by id it is idempotent
    again = server.run("token", "revoke", "laptop")
    assert again.returncode != 0 and "no active token(s) named 'laptop'" in again.stderr
    assert server.run("token", "revoke", token["id"]).returncode == 0


def test_bad_input_names_the_option(server: Server) -> None:
    bad = server.run("token", "create", "x", "--expires-in", "soon")
    assert bad.returncode != 0 and "--expires-in" in bad.stderr and "30m" in bad.stderr, bad.stderr
    bad = server.run("token", "create", "x", "--scope", "root")
    assert bad.returncode != 0 and "--scope" in bad.stderr
    assert "x" not in {t["name"] for t in json.loads(server.run("token", "list", "-o", "json").stdout)}
