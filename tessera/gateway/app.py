"""The gateway: one process that proxies ``/serve/NAME/...`` to model-server replicas, probes their
readiness and reports traffic to the control plane (whose answer is the route table). ``Gateway``
runs it in the calling thread (``run``, signals handled) or in a background thread (``start``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType

import aiohttp
import uvicorn

from tessera.api.common import NAME_FORM, is_name
from tessera.gateway.metrics import PROMETHEUS_CONTENT_TYPE, Metrics
from tessera.gateway.probe import Prober
from tessera.gateway.problems import Receive, Scope, Send, problem, respond
from tessera.gateway.proxy import PREFIX, Proxy
from tessera.gateway.report import Syncer
from tessera.gateway.routes import ReplicaState, Router

log = logging.getLogger(__name__)

GRACE_S = 10  # in-flight requests get this long to finish at shutdown
CONNECT_TIMEOUT_S = 5.0


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM/SIGINT only start the graceful shutdown (uvicorn re-raises
    the signal once shut down, which would skip the gateway's own cleanup), and ``on_shutdown``
    runs as it begins."""

    on_shutdown: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                log.info("signal %d: shutting down (in-flight requests get %ds)", sig, GRACE_S)
                self.should_exit = True

        originals = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency (uvicorn[standard])
        return None
    return uvloop.new_event_loop


def write_ready_file(path: str | os.PathLike[str], url: str) -> None:
    """Write ``url`` to ``path`` atomically (a reader never sees a partial file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(url + "\n")
    os.replace(tmp, target)


class Gateway:
    """The inference gateway. ``start()``/``stop()`` run it in a background thread (tests,
    benchmarks); ``run()`` blocks, stopping gracefully on SIGTERM/SIGINT."""

    def __init__(
        self,
        control_url: str,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "gateway",
        advertise_url: str | None = None,
        interval: float = 1.0,
    ) -> None:
        if not is_name(name):
            raise ValueError(f"gateway name {name!r} is not {NAME_FORM}")
        if not 0 < interval <= 600:
            raise ValueError(f"interval is in (0, 600] seconds, got {interval}")
        self.control_url = control_url
        self.token = token
        self.host = host
        self.port = port
        self.name = name
        self.advertise_url = advertise_url
        self.interval = interval
        self.metrics = Metrics()
        self.router = Router(self.metrics)
        self._sock: socket.socket | None = None
        self._url: str | None = None
        self._proxy: Proxy | None = None
        self._server: _Server | None = None
        self._stop_requested = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where clients reach the gateway (known once bound)."""
        if self._url is None:
            raise RuntimeError("the gateway is not bound yet")
        return self._url

    def bind(self) -> str:
        """Bind the listening socket (port 0: a free one); returns the advertised URL."""
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.set_inheritable(True)
            self._sock = sock
            port = int(sock.getsockname()[1])
            host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
            self._url = (self.advertise_url or f"http://{host}:{port}").rstrip("/")
        return self.url

    # ASGI ----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        path: str = scope["path"]
        if path.startswith(PREFIX) and self._proxy is not None:
            await self._proxy(scope, receive, send)
        elif path == "/healthz":
            await respond(send, 200, b"ok", b"text/plain; charset=utf-8")
        elif path == "/metrics":
            await respond(send, 200, self.metrics.render(), PROMETHEUS_CONTENT_TYPE.encode())
        else:
            await problem(send, 404, f"nothing at {path}; services are at {PREFIX}NAME/...")

    # lifecycle -----------------------------------------------------------------------------------

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Run until ``stop()``/a signal: sync the route table, then serve; ``on_ready(url)`` once
        listening."""
        url = self.bind()
        assert self._sock is not None
        upstream = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=4.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            max_field_size=16384,
        )
        probes = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=4.0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        control = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        tasks: list[asyncio.Task[None]] = []
        try:
            syncer = Syncer(
                self.router,
                self.metrics,
                control,
                control_url=self.control_url,
                token=self.token,
                name=self.name,
                url=url,
                interval=self.interval,
            )

            def replica_ready(replica: ReplicaState) -> None:
                self.router.changed()
                syncer.trigger()

            prober = Prober(self.router, probes, replica_ready)
            self._proxy = Proxy(self.router, self.metrics, upstream, syncer.trigger)
            await syncer.sync()  # start with a table where the control plane answers
            tasks = [asyncio.create_task(syncer.run()), asyncio.create_task(prober.run())]
            config = uvicorn.Config(
                self,
                http="httptools",
                lifespan="off",
                proxy_headers=False,  # X-Forwarded-For is extended, not trusted
                access_log=False,
                log_config=None,
                server_header=False,
                date_header=False,
                timeout_graceful_shutdown=GRACE_S,
            )
            server = self._server = _Server(config)
            proxy = self._proxy
            server.on_shutdown = lambda: proxy.shutdown(GRACE_S - 1)
            server.should_exit = self._stop_requested
            serving = asyncio.create_task(server.serve(sockets=[self._sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.005)
            if server.started:
                log.info("gateway %s listening on %s (control plane %s)", self.name, url, self.control_url)
                if on_ready is not None:
                    on_ready(url)
            await serving
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for session in (upstream, probes, control):
                await session.close()
            self._sock.close()
            self._sock = None
            log.info("gateway %s stopped", self.name)

    def run(self, ready_file: str | None = None) -> None:
        """Serve in this thread until SIGTERM/SIGINT (graceful: in-flight requests finish, up to
        10 s). Writes the URL to ``ready_file`` once listening."""

        def ready(url: str) -> None:
            if ready_file:
                write_ready_file(ready_file, url)

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self.serve(ready))

    def start(self, timeout: float = 15.0) -> str:
        """Serve in a daemon thread; returns the URL once listening."""
        listening = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(self.serve(lambda _: listening.set()))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                log.exception("gateway %s failed", self.name)
            finally:
                listening.set()

        self.bind()
        self._thread = threading.Thread(target=main, name=f"gateway-{self.name}", daemon=True)
        self._thread.start()
        if not listening.wait(timeout):
            raise TimeoutError(f"the gateway did not start listening within {timeout}s")
        if failure or not self._thread.is_alive():
            raise RuntimeError(f"the gateway failed to start: {failure[0] if failure else 'stopped'}")
        return self.url

    def request_stop(self) -> None:
        """Begin the graceful shutdown (from any thread)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    def stop(self, timeout: float = 15.0) -> None:
        """Stop a ``start()``-ed gateway and wait for it."""
        self.request_stop()
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            self._thread.join(max(deadline - time.monotonic(), 0))
            if self._thread.is_alive():
                log.warning("gateway %s did not stop within %ss", self.name, timeout)

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
