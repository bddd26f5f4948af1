"""The agent's small HTTP server: task logs for the control plane (bearer: the agent secret), and
cached dataset files for peer nodes (their peer token)."""

from __future__ import annotations

import hmac
import re
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Annotated

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from tessera.datacache.peers import add_cache_routes
from tessera.datacache.stream import add_stream_routes
from tessera.node import logs, shim

if TYPE_CHECKING:
    from tessera.node.agent import Agent


_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-a\d+")


def build_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="tessera node agent", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "node": agent.config.name}

    @app.get("/jobs/{job_id}/tasks/{key}/logs")
    def task_logs(
        job_id: uuid.UUID,
        key: str,
        authorization: Annotated[str, Header()] = "",
        follow: bool = False,
        tail: Annotated[int | None, Query(ge=0)] = None,
        since: Annotated[float | None, Query(ge=0, description="Seconds back from now.")] = None,
    ) -> StreamingResponse:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {agent.secret}".encode()):
            raise HTTPException(401, "bad agent secret")
        if not _KEY.fullmatch(key):
            raise HTTPException(404, f"{key!r} is not a task attempt (<task uuid>-a<attempt>)")
        task_dir = agent.task_path(job_id, key)
        if key != task_dir.name or not task_dir.is_dir():
            raise HTTPException(404, f"no logs for task {key} of job {job_id} on this node")
        log_dir = agent.task_log_dir(job_id, key)
        path = log_dir / shim.OUTPUT_LOG
        start = 0
        if since is not None:
            start = logs.offset_since(log_dir, time.time() - since)
        if tail is not None and path.exists():
            start = max(start, logs.offset_tail(path, tail))

        def finished() -> bool:
            state = shim.read_state(task_dir)
            return state is None or state.exit_code is not None or agent.stop_event.is_set()

        return StreamingResponse(
            logs.stream(path, start, follow, finished), media_type="text/plain; charset=utf-8"
        )

    # dataset files this node holds, for peers loading the same dataset (peer token: cache reads only)
    add_cache_routes(app, lambda: agent.data.cache if agent.data is not None else None, lambda: agent.secret)
    # stream-mode reads for this node's tasks (a token per dataset, in the task's environment)
    add_stream_routes(app, lambda: agent.data, lambda: agent.secret)
    return app


def serve_logs(agent: Agent, host: str, port: int) -> tuple[uvicorn.Server, int]:
    """Start the server in a daemon thread; returns it and the port it listens on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(build_app(agent), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="logs", daemon=True)
    thread.start()
    return server, int(sock.getsockname()[1])
