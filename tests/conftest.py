"""Fixtures: databases (SQLite and PostgreSQL), the real app, tokens and users."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tessera.platform.app import create_app
from tessera.platform.settings import Settings
from tessera.platform.store import migrate
from tessera.platform.store.db import Database
from tests.pg import PostgresServer, start_postgres

TEMPLATE = "tessera_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process, with a migrated template database."""
    server = start_postgres()
    try:
        server.execute(f"CREATE DATABASE {TEMPLATE}")
        template = Database(server.url(TEMPLATE))
        migrate.upgrade(template.engine)
        template.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tessera.db'}"
        db = Database(url)
        migrate.upgrade(db.engine)
        db.dispose()
        return url
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    server.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return server.url(name)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@dataclass
class Api:
    """The real app over Starlette's TestClient, with helpers to act as different users."""

    client: TestClient
    admin_token: str
    db: Database

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def user(
        self,
        name: str,
        role: str | None = "member",
        project: str = "default",
        scopes: list[str] | None = None,
        expires_in: str | None = None,
    ) -> str:
        """Create a user (with a role in ``project``) and return a token for them."""
        r = self.call("POST", "/api/v1/users", json={"name": name})
        assert r.status_code in (201, 409), r.text
        if role:
            r = self.call("PUT", f"/api/v1/projects/{project}/members/{name}", json={"role": role})
            assert r.status_code == 200, r.text
        body: dict[str, Any] = {"name": f"{name}-token", "user": name, "scopes": scopes or ["user"]}
        if expires_in:
            body["expires_in"] = expires_in
        r = self.call("POST", "/api/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


def job_body(name: str | None = "hello", **resources: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "groups": [{"command": ["python", "-c", "print(1)"], "resources": resources or {"gpu_memory": "4Gi"}}]
    }
    if name:
        body["name"] = name
    return body


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path / "home", database_url=db_url)
    app = create_app(settings, run_controllers=False)
    with TestClient(app) as client:
        yield Api(client=client, admin_token=app.state.bootstrap_secret, db=app.state.db)
