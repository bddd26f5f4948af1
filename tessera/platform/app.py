"""The control-plane app factory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI

from tessera import __version__
from tessera.platform import controllers, fairness, problems
from tessera.platform.metrics import Metrics
from tessera.platform.routers import (
    admin,
    datasets,
    events,
    health,
    jobs,
    logs,
    nodes,
    projects,
    queues,
    serving,
    session,
    users,
)
from tessera.platform.services.identity import bootstrap
from tessera.platform.services.traffic import Traffic
from tessera.platform.settings import Settings
from tessera.platform.store import migrate
from tessera.platform.store.db import Database

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def write_credentials(path: Path, url: str, token: str) -> None:
    """Write the CLI's credentials (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.replace(tmp, path)


def public_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    return settings.url or f"http://{host}:{settings.port}"


def _local_agent(db: Database, settings: Settings) -> None:
    """`tessera up`: reuse this machine's running agent, or start a detached one."""
    from tessera.platform.backends import local

    url = public_url(settings)
    local.write_up_file(settings, url)
    token_file = local.ensure_node_token(db, settings)
    pid = local.agent_pid(settings)
    if pid is not None and local.agent_matches(settings, url, token_file):
        log.info("reusing node agent %s (pid %s)", local.node_name(settings), pid)
        return
    if pid is not None:
        # it talks to another URL or with an old token: it could never reach us
        log.info(
            "restarting node agent %s (pid %s): its URL or token changed", local.node_name(settings), pid
        )
        local.stop_agent(settings, pid)
    local.start_agent(settings, url, token_file)
    log.info(
        "started node agent %s; its log: %s",
        local.node_name(settings),
        local.agent_dir(settings) / "agent.log",
    )


def _local_gateway(db: Database, settings: Settings) -> None:
    """`tessera up`: reuse this machine's running gateway, or start a detached one. Run in the
    background: the gateway's first report needs this control plane to be serving already."""
    from tessera.platform.backends import gateway

    try:
        url = gateway.ensure(db, settings, public_url(settings))
    except Exception:
        log.exception("could not start the gateway; see %s", gateway.gateway_dir(settings) / "gateway.log")
        return
    if url is None:
        log.error("the gateway did not come up; see %s", gateway.gateway_dir(settings) / "gateway.log")
    else:
        log.info("gateway at %s: services are at %s/serve/NAME/", url, url)


def create_app(settings: Settings | None = None, *, run_controllers: bool = True) -> FastAPI:
    """Build the app; the database is opened, migrated and bootstrapped in the lifespan."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        from tessera.platform.leader import LeaderCollector, migration_lock

        def upgrade() -> None:
            with migration_lock(db):  # replicas starting together take turns
                migrate.upgrade(db.engine)

        await asyncio.to_thread(upgrade)
        secret = await asyncio.to_thread(bootstrap, db)
        app.state.db = db
        app.state.metrics = metrics
        app.state.bootstrap_secret = secret
        if secret is not None:
            write_credentials(settings.credentials_path, public_url(settings), secret)
            log.info("created the admin token; CLI credentials in %s", settings.credentials_path)
        if settings.start_agent:
            await asyncio.to_thread(_local_agent, db, settings)
        if settings.start_gateway:
            asyncio.get_running_loop().run_in_executor(None, _local_gateway, db, settings)
        # every replica serves the API; the one holding the leader lease also runs the controllers
        app.state.leader = controllers.elect(db, settings, app.state.traffic, metrics.scheduler)
        if not getattr(app.state, "leader_metrics", False):  # a registry takes a collector once
            metrics.registry.register(LeaderCollector(lambda: app.state.leader))
            app.state.leader_metrics = True
        tasks = controllers.start(db, settings, leader=app.state.leader) if run_controllers else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            db.dispose()

    app = FastAPI(
        title="Tessera",
        version=__version__,
        description="GPU-sharing AI job platform: jobs, queues, nodes and the change feed.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.traffic = Traffic()  # what the gateways report, for the autoscaler
    # metrics need the db at scrape time; it is bound in the lifespan
    metrics = Metrics(lambda: app.state.db, lambda: app.state.traffic)
    metrics.install(app)
    problems.install(app)
    fairness.install(app, settings, metrics.registry)  # 429s for floods; agents keep their lane
    api = APIRouter(prefix=API_PREFIX)
    for module in (jobs, logs, queues, projects, users, nodes, events, datasets, serving, session, admin):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    _web(app)
    return app


WEB = Path(__file__).resolve().parents[1] / "web" / "static"


def _web(app: FastAPI) -> None:
    """The web UI at the root URL: static files, no build step."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    if not (WEB / "index.html").exists():
        return
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})
