"""Forwarding ``/serve/NAME/<rest>`` to a replica of service NAME: auth, the revision split, holding
requests while no replica is ready, retrying on another replica when a connection cannot be made,
and streaming both bodies (raw ASGI in, aiohttp's pooled client out)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from yarl import URL

from tessera.gateway.body import Body, ClientWatch
from tessera.gateway.metrics import Metrics
from tessera.gateway.problems import Receive, Scope, Send, problem
from tessera.gateway.routes import ReplicaState, RevisionState, Router, RouteState

log = logging.getLogger(__name__)

PREFIX = "/serve/"
MAX_ATTEMPTS = 10
UNKNOWN_WAIT_S = 3.0  # how long an unknown service's request waits for a fresher route table
MAX_DROPPED = 2  # a request whose connection is cut twice may be what kills the replica: stop
RETRY_AFTER = [(b"retry-after", b"1")]

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"trailers", b"upgrade"}
)
# also not forwarded upstream: the gateway's own host and the service token
_REQUEST_DROP = _HOP_BY_HOP | {b"host", b"authorization", b"x-forwarded-for", b"expect"}
_SKIP_AUTO = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class _Retry:
    """A failed attempt that did not reach the replica: try another."""

    def __init__(self, dropped: bool) -> None:
        self.dropped = dropped  # connected, then cut off before a byte of the body went


UNREACHABLE = _Retry(dropped=False)
DROPPED = _Retry(dropped=True)


class _Request:
    """One request's routing state, passed between the steps."""

    __slots__ = ("scope", "receive", "send", "target", "headers", "body", "rev", "watch", "deadline")

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, target: str, headers: list[tuple[str, str]]
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.target = target  # path and query to request at the replica
        self.headers = headers
        self.body: Body = Body.EMPTY
        self.rev: RevisionState | None = None
        self.watch: ClientWatch | None = None
        self.deadline = 0.0


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")} - {b"close", b"keep-alive", b""}


def _target(scope: Scope, path: str) -> str:
    """The path (``/`` + the rest after ``/serve/NAME``, as the client encoded it) and query."""
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        cut = raw.find(b"/", len(PREFIX))
        rest = raw[cut:].decode("latin-1") if cut >= 0 else "/"
    else:
        cut = path.find("/", len(PREFIX))
        rest = path[cut:] if cut >= 0 else "/"
    query: bytes = scope.get("query_string", b"")
    return f"{rest}?{query.decode('latin-1')}" if query else rest


class Proxy:
    """The ``/serve/`` ASGI handler."""

    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        on_hold: Callable[[], None],
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.session = session
        self.on_hold = on_hold
        self.hold_until = float("inf")  # the shutdown's deadline for held requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        cut = path.find("/", len(PREFIX))
        name = path[len(PREFIX) :] if cut < 0 else path[len(PREFIX) : cut]
        route = self.router.routes.get(name)
        if route is None and self.router.synced:
            route = await self._fresh_route(name)
        if route is None:
            if not self.router.synced:
                self.metrics.rejected.labels("not_synced").inc()
                await problem(send, 503, "the gateway has no route table yet; retry shortly", RETRY_AFTER)
            else:
                self.metrics.rejected.labels("unknown").inc()
                await problem(send, 404, f"no service named {name!r} at this gateway")
            return

        authorization: str | None = None
        host: str | None = None
        forwarded_for: str | None = None
        has_body = False
        drop: set[bytes] = set()
        headers: list[tuple[str, str]] = []
        for key, value in scope["headers"]:
            if key in _REQUEST_DROP or key.startswith(b"proxy-"):
                if key == b"authorization":
                    authorization = value.decode("latin-1")
                elif key == b"host":
                    host = value.decode("latin-1")
                elif key == b"x-forwarded-for":
                    forwarded_for = value.decode("latin-1")
                elif key == b"transfer-encoding":
                    has_body = True
                elif key == b"connection":
                    drop |= _connection_tokens(value)
                continue
            if key == b"content-length":
                has_body = has_body or value.strip() not in (b"0", b"")
            headers.append((key.decode("latin-1"), value.decode("latin-1")))
        if drop:
            headers = [(k, v) for k, v in headers if k.encode("latin-1") not in drop]
        if not route.authorized(authorization):
            self.metrics.rejected.labels("unauthorized").inc()
            detail = "a bearer token for this service is required" if not authorization else "bad token"
            await problem(send, 401, f"{detail} (service {name!r})", [(b"www-authenticate", b"Bearer")])
            return
        client = scope.get("client")
        if client:
            forwarded_for = f"{forwarded_for}, {client[0]}" if forwarded_for else client[0]
        if forwarded_for:
            headers.append(("X-Forwarded-For", forwarded_for))
        present = {k for k, _ in headers}
        if host and "x-forwarded-host" not in present:
            headers.append(("X-Forwarded-Host", host))
        if "x-forwarded-proto" not in present:
            headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))

        rev = route.choose()
        if rev is None:
            self.metrics.rejected.labels("no_revision").inc()
            await problem(send, 503, f"no revision of service {name!r} takes traffic", RETRY_AFTER)
            return
        request = _Request(scope, receive, send, _target(scope, path), headers)
        request.rev = rev
        request.deadline = time.monotonic() + route.route.hold_timeout_s
        rev.stats.enter()
        status: int | None = None
        try:
            if has_body:
                request.body = await Body.read(receive)
            if not request.body.gone:
                status = await self._serve(request)
        finally:
            if request.watch is not None:
                request.watch.stop()
            request.rev.stats.leave(status, time.perf_counter() - start)

    async def _fresh_route(self, name: str) -> RouteState | None:
        """A service created a moment ago may not be in this gateway's table yet: sync now and
        wait (briefly) for the next table before saying it does not exist."""
        self.on_hold()
        deadline = time.monotonic() + UNKNOWN_WAIT_S
        seen, tables = self.router.revision, 0
        while (left := deadline - time.monotonic()) > 0:
            await self.router.wait_changed(left)
            route = self.router.routes.get(name)
            if route is not None:
                return route
            if self.router.revision != seen:
                # the first new table may come from a sync that began before the service existed
                seen, tables = self.router.revision, tables + 1
                if tables == 2:
                    return None
                self.on_hold()
        return None

    def shutdown(self, grace: float) -> None:
        """The gateway stops: held requests get ``grace`` seconds more, then a 503."""
        self.hold_until = time.monotonic() + grace
        self.router.changed()

    async def _serve(self, request: _Request) -> int | None:
        """Attempts until one reaches a replica; the status answered (None: the client left)."""
        attempts = dropped = 0
        while True:
            replica = await self._replica(request)
            if replica is None:
                if request.watch is not None and request.watch.gone:
                    return None
                assert request.rev is not None
                if request.rev.removed:
                    detail = f"revision {request.rev.number} is no longer routed"
                elif time.monotonic() >= self.hold_until:
                    detail = "the gateway is shutting down"
                else:
                    detail = f"no ready replica of revision {request.rev.number} within the hold timeout"
                await problem(request.send, 503, detail, RETRY_AFTER)
                return 503
            replica.in_flight += 1
            try:
                result = await self._attempt(request, replica)
            finally:
                replica.in_flight -= 1
            if not isinstance(result, _Retry):
                return result
            attempts += 1
            dropped += result.dropped
            if attempts >= MAX_ATTEMPTS or dropped >= MAX_DROPPED:
                await problem(request.send, 502, f"{attempts} attempts failed (refused or dropped)")
                return 502

    async def _replica(self, request: _Request) -> ReplicaState | None:
        """A routable replica of the request's revision, holding the request until one is
        (``None`` at the hold deadline, or when the client left)."""
        rev = request.rev
        assert rev is not None
        replica = rev.pick() or self._fallback(request)
        if replica is not None:
            return replica
        rev.stats.hold(1)
        self.on_hold()
        try:
            if request.watch is None and request.body.complete:
                request.watch = ClientWatch(request.receive)
            while True:
                if rev.removed:  # the table dropped the revision: choose again
                    moved = self._rechoose(request)
                    if moved is None:
                        return None
                    rev = moved
                    replica = rev.pick()
                    if replica is not None:
                        return replica
                remaining = min(request.deadline, self.hold_until) - time.monotonic()
                if remaining <= 0:
                    return None
                if request.watch is None:
                    await self.router.wait_changed(remaining)
                else:
                    changed = asyncio.ensure_future(self.router.wait_changed(remaining))
                    try:
                        await asyncio.wait((changed, request.watch.task), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        changed.cancel()
                    if request.watch.gone:
                        return None
                replica = rev.pick() or self._fallback(request)
                if replica is not None:
                    return replica
        finally:
            rev.stats.hold(-1)

    def _fallback(self, request: _Request) -> ReplicaState | None:
        """While the chosen revision has no ready replica (a new revision still loading), another
        revision's ready replica serves the request: traffic moves to a revision once it is ready,
        like Knative's route. The request then counts for the revision that serves it."""
        rev = request.rev
        assert rev is not None
        route = self.router.find(rev.service_id)
        if route is None:
            return None
        others = sorted(
            (r for r in route.revisions.values() if r is not rev and not r.removed),
            key=lambda r: (r.percent, r.number),
            reverse=True,
        )
        for other in others:
            replica = other.pick()
            if replica is not None:
                rev.stats.leave(None, 0.0)
                other.stats.enter()
                request.rev = other
                return replica
        return None

    def _rechoose(self, request: _Request) -> RevisionState | None:
        old = request.rev
        assert old is not None
        route = self.router.find(old.service_id)
        rev = route.choose() if route is not None else None
        if rev is None:
            return None
        old.stats.hold(-1)
        old.stats.leave(None, 0.0)
        rev.stats.enter()
        rev.stats.hold(1)
        request.rev = rev
        return rev

    async def _attempt(self, request: _Request, replica: ReplicaState) -> int | None | _Retry:
        body = request.body
        rev = request.rev
        assert rev is not None
        url = URL(f"http://{replica.endpoint}{request.target}", encoded=True)
        try:
            response = await self.session.request(
                request.scope["method"],
                url,
                headers=request.headers,
                data=body.payload(),
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            )
        except _CONNECT_ERRORS as exc:
            self.router.replica_failed(replica)
            log.warning(
                "replica %s at %s unreachable (%s); not routing to it", replica.id, replica.endpoint, exc
            )
            return UNREACHABLE
        except (aiohttp.ClientError, OSError) as exc:
            if body.gone:
                return None
            if body.replayable:
                log.info(
                    "replica %s at %s dropped a request before it started: %s",
                    replica.id,
                    replica.endpoint,
                    exc,
                )
                return DROPPED
            log.warning("replica %s at %s failed a request: %r", replica.id, replica.endpoint, exc)
            where = [(b"x-tessera-revision", rev.number_header), (b"x-tessera-replica", replica.id_header)]
            await problem(request.send, 502, f"the replica failed: {type(exc).__name__}", where)
            return 502
        try:
            return await self._stream(request, response, rev, replica)
        finally:
            response.release()

    async def _stream(
        self, request: _Request, response: aiohttp.ClientResponse, rev: RevisionState, replica: ReplicaState
    ) -> int | None:
        send = request.send
        status = response.status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": _response_headers(response, rev, replica),
            }
        )
        content = response.content
        if request.watch is not None:
            request.watch.on_gone = response.close
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    await send(_END)
                    return status
                if content.at_eof():
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return status
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if request.watch is not None and request.watch.gone:
                    response.close()
                    return None
                if request.watch is None and request.body.complete:
                    # a long response: stop reading it if the client goes
                    request.watch = ClientWatch(request.receive, response.close)
        except (aiohttp.ClientError, OSError) as exc:
            response.close()
            if request.body.gone or (request.watch is not None and request.watch.gone):
                return None  # the client left
            log.warning("replica %s at %s broke off a response: %r", replica.id, replica.endpoint, exc)
            return 502  # the response started: the client sees the connection close


def _response_headers(
    response: aiohttp.ClientResponse, rev: RevisionState, replica: ReplicaState
) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    drop: set[bytes] | None = None
    for raw_key, value in response.raw_headers:
        key = raw_key.lower()
        if key in _HOP_BY_HOP or key.startswith(b"proxy-"):
            if key == b"connection":
                drop = _connection_tokens(value)
            continue
        headers.append((key, value))
    if drop:
        headers = [(k, v) for k, v in headers if k not in drop]
    headers.append((b"x-tessera-revision", rev.number_header))
    headers.append((b"x-tessera-replica", replica.id_header))
    return headers
