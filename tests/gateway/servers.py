"""Test doubles around the gateway: a fake control plane (records reports, answers the route table
a test sets) and real model-server replicas (aiohttp apps on one event loop in a thread)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from aiohttp import web

from tessera.api.serving import GatewayReport, Route, RouteReplica, RouteRevision, RouteTable

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# control plane ---------------------------------------------------------------------------------


class FakeControlPlane:
    """``POST /api/v1/gateway/report``: checks the bearer token, records the report, answers the
    table set last. ``failing`` makes it answer 500."""

    def __init__(self, token: str = "gw-secret") -> None:
        self.token = token
        self.lock = threading.Lock()
        self.table = RouteTable(revision=1, services=[])
        self.reports: list[tuple[float, GatewayReport]] = []
        self.failing = False
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if self.path != "/api/v1/gateway/report":
                    return self._answer(404, b"{}")
                if self.headers.get("Authorization") != f"Bearer {plane.token}":
                    return self._answer(401, b'{"title":"Unauthorized"}')
                report = GatewayReport.model_validate_json(data)
                with plane.lock:
                    plane.reports.append((time.monotonic(), report))
                    failing, body = plane.failing, plane.table.model_dump_json().encode()
                if failing:
                    return self._answer(500, b'{"title":"Internal Server Error"}')
                return self._answer(200, body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-cp", daemon=True)
        self.thread.start()

    def set_routes(self, *routes: Route) -> int:
        """Answer these routes from now on; returns the new table revision."""
        with self.lock:
            self.table = RouteTable(revision=self.table.revision + 1, services=list(routes))
            return self.table.revision

    def find_report(
        self, predicate: Callable[[GatewayReport], bool], after: int = 0, timeout: float = 10.0
    ) -> int:
        """The index of the first report (from ``after``) that matches."""

        def find() -> int | None:
            for index, report in enumerate(self.all_reports()[after:], after):
                if predicate(report):
                    return index + 1  # truthy
            return None

        return wait_until(find, timeout, "a matching gateway report") - 1

    def all_reports(self) -> list[GatewayReport]:
        with self.lock:
            return [r for _, r in self.reports]

    def report_count(self) -> int:
        with self.lock:
            return len(self.reports)

    def wait_report(
        self, predicate: Callable[[GatewayReport], bool], timeout: float = 10.0, after: int = 0
    ) -> GatewayReport:
        """The first report (from index ``after``) that matches."""

        def find() -> GatewayReport | None:
            for report in self.all_reports()[after:]:
                if predicate(report):
                    return report
            return None

        return wait_until(find, timeout, "a matching gateway report")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# replicas --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Replica:
    """One model server. ``events`` is a log of what it saw, in order: ``("probe", status)``,
    ``("request", request id)``."""

    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    port: int = 0
    ready: bool = True
    active: int = 0
    events: list[tuple[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    upload_bytes: int = 0
    killed: bool = False
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def route_replica(self, draining: bool = False) -> RouteReplica:
        return RouteReplica(id=self.id, endpoint=self.endpoint, draining=draining)

    def request_ids(self) -> set[str]:
        return {str(r["id"]) for r in list(self.requests)}

    def probes(self, status: int | None = None) -> int:
        """How many readiness probes it answered (with ``status``)."""
        return sum(1 for kind, value in list(self.events) if kind == "probe" and status in (None, value))


class Backends:
    """Replicas served by aiohttp on one event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="replicas", daemon=True)
        self.thread.start()
        self.replicas: list[Replica] = []
        self._gates: dict[str, asyncio.Event] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, name: str, ready: bool = True) -> Replica:
        replica = Replica(name=name, ready=ready)
        self.call(self._start(replica))
        self.replicas.append(replica)
        return replica

    def release(self, key: str) -> None:
        """Let the requests blocked on ``key`` (``/block?key=``) and streams named ``key`` finish."""
        self.loop.call_soon_threadsafe(lambda: self._gate(key).set())

    def kill(self, replica: Replica) -> tuple[int, int]:
        """Close its listener and abort every open connection (a crash); (requests it had
        received, requests in flight on it) at that moment."""
        return self.call(self._kill(replica))

    def close(self) -> None:
        def open_all() -> None:
            for gate in self._gates.values():
                gate.set()

        self.loop.call_soon_threadsafe(open_all)
        for replica in self.replicas:
            if replica.runner is not None:
                self.call(replica.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _gate(self, key: str) -> asyncio.Event:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = asyncio.Event()
        return gate

    async def _kill(self, replica: Replica) -> tuple[int, int]:
        """(requests it had received, requests in flight on it) when it died."""
        replica.killed = True
        received, in_flight = len(replica.requests), replica.active
        assert replica.site is not None and replica.runner is not None
        await replica.site.stop()
        server = replica.runner.server
        assert server is not None
        for handler in server.connections:
            if handler.transport is not None:
                handler.transport.abort()
        return received, in_flight

    async def _start(self, replica: Replica) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/ready", self._handler(replica, self._ready))
        app.router.add_route("*", "/block", self._handler(replica, self._block))
        app.router.add_get("/stream", self._handler(replica, self._stream))
        app.router.add_route("*", "/upload", self._handler(replica, self._upload))
        app.router.add_get("/status", self._handler(replica, self._status))
        app.router.add_route("*", "/slow", self._handler(replica, self._slow))
        app.router.add_route("*", "/{tail:.*}", self._handler(replica, self._echo))
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        replica.runner, replica.site = runner, site
        assert runner.addresses
        replica.port = int(runner.addresses[0][1])

    def _handler(
        self, replica: Replica, fn: Callable[[Replica, web.Request], Coroutine[Any, Any, web.StreamResponse]]
    ) -> Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.path == "/ready":
                return await fn(replica, request)
            if replica.killed:  # arrived while the crash was under way: it dies with the replica
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("the replica was killed")
            replica.events.append(("request", request.headers.get("X-Request-Id")))
            replica.requests.append(
                {
                    "id": request.headers.get("X-Request-Id"),
                    "method": request.method,
                    "path": request.raw_path,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                }
            )
            replica.active += 1
            try:
                return await fn(replica, request)
            finally:
                replica.active -= 1

        return handle

    async def _ready(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        status = 200 if replica.ready else 503
        replica.events.append(("probe", status))
        return web.Response(status=status, text="ready" if replica.ready else "loading")

    async def _echo(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = {
            "replica": replica.name,
            "method": request.method,
            "path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
        }
        return web.json_response(payload, headers={"X-Replica-Name": replica.name})

    async def _block(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.wait_for(self._gate(request.query["key"]).wait(), 30)
        return web.json_response({"replica": replica.name})

    async def _stream(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.wait_for(self._gate(request.query["key"]).wait(), 30)
        await response.write(b"last\n")
        await response.write_eof()
        return response

    async def _upload(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            replica.upload_bytes = total
        return web.json_response({"replica": replica.name, "total": total})

    async def _slow(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(float(request.query.get("ms", "20")) / 1000)
        return web.json_response({"replica": replica.name})

    async def _status(self, replica: Replica, request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.query["code"]), text="as asked")


def route(
    name: str,
    revisions: list[tuple[int, int, list[RouteReplica]]],
    *,
    service_id: uuid.UUID | None = None,
    token: str | None = "svc-token",
    public: bool = False,
    hold_timeout_s: float = 20.0,
    readiness_path: str = "/ready",
) -> Route:
    return Route(
        service_id=service_id or uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        project="default",
        public=public,
        token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
        readiness_path=readiness_path,
        hold_timeout_s=hold_timeout_s,
        revisions=[RouteRevision(number=n, percent=p, replicas=reps) for n, p, reps in revisions],
    )


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)
