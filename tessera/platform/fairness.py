"""API priority and fairness: per-user and per-project rate and concurrency limits, with a
protected lane for node agents, gateways and metrics scrapers, so one noisy client cannot
starve the rest (after Kubernetes' API Priority and Fairness). A refused request gets a 429
problem document naming the limit, with ``Retry-After``.

A pure ASGI middleware (streamed responses pass through untouched) sorts each request into a
**lane** by its bearer token (or web-session cookie), looked up by hash in a short TTL cache:

* ``system`` -- tokens with only node, gateway or metrics scopes. Its own seats, no rate limit
  and no per-caller limit, so user traffic can never take an agent's heartbeat slot. The
  scheduler and controllers run in-process and do not come through HTTP at all.
* ``admin`` -- a cluster admin (admin user, admin-scope token). Its own seats and no rate
  limit: the operator is trusted (``tessera up`` and its benches act as admin), and a flood of
  admin requests cannot take users' seats, nor users' an admin's.
* ``user`` -- every other valid token: a token bucket and a concurrency limit per user, and per
  project a bucket and a concurrency limit shared by all its members; all users share the
  lane's seats.
* ``anonymous`` -- no token, or one that is wrong, revoked or expired: a bucket and a
  concurrency limit per client address (behind a proxy all share one; ``X-Forwarded-For`` is
  not trusted). Authentication still runs after admission and answers 401.

``/healthz``, ``/readyz``, the web UI and ``/openapi.json`` are outside every lane.

**Which project a request acts in.** The project named by the request's ``project`` query
parameter or ``/projects/{name}`` path, when the caller is a member of it; otherwise every
project the caller belongs to. Bodies are not parsed (that would mean buffering every upload
in the middleware), so a submit names its project only in its body and is charged to all the
submitter's projects. That is conservative: a team cannot leave its budget by omitting the
parameter, and a member of several projects is felt only by those projects' members, never by
anyone outside them.

**Seats and queues.** A request holds one seat in each of its pools (lane, user, projects)
until its response *starts*, so a watch or a followed log never holds a seat while it streams;
those long-lived requests count instead against a cap on open streams per user (or client
address); agents and admins have none. A request
that finds its seats busy waits in its caller's bounded FIFO queue; freed seats go to the
callers' queue heads in round-robin order (:class:`tessera.platform.fairqueue.Seats`).

**Defaults** (``TESSERA_API_*``, see Settings) sit far above what a person, the CLI or the web UI
does: a user may burst 500 requests and keep up 50 a second with 8 at once; a project 2000, 200
and 16. Only floods meet them. The Python client waits out a 429's ``Retry-After`` for requests
that are safe to send again (GET, and writes with an Idempotency-Key, such as submits).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from starlette.middleware import Middleware
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as Scope_

from tessera.api.identity import Scope
from tessera.api.problems import Problem
from tessera.platform.auth import SESSION_COOKIE, hash_secret
from tessera.platform.fairqueue import Buckets, Pool, Rate, Refused, Seats
from tessera.platform.problems import problem_response
from tessera.platform.settings import Settings
from tessera.platform.store.db import Database
from tessera.platform.store.rows import MembershipRow, ProjectRow, TokenRow, UserRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
_CACHE_ENTRIES = 4096
_STALE = 10.0  # seconds a due identity may still be used while it is read again
_TRUE = frozenset({"1", "true", "yes", "on"})


class Lane(enum.StrEnum):
    SYSTEM = "system"
    ADMIN = "admin"
    USER = "user"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Identity:
    """What the limiter needs to know of a valid token."""

    lane: Lane
    user_id: uuid.UUID
    user: str
    projects: frozenset[str]


def lookup(db: Database, digest: str, now: datetime) -> Identity | None:
    """The identity of the token with this hash; None if there is none that authenticates."""
    with db.read() as session:
        found = session.execute(
            select(TokenRow.scopes, TokenRow.revoked_at, TokenRow.expires_at, UserRow)
            .join(UserRow, UserRow.id == TokenRow.user_id)
            .where(TokenRow.secret_hash == digest)
        ).first()
        if found is None:
            return None
        scopes, revoked, expires, user = found
        if revoked is not None or (expires is not None and expires <= now) or user.disabled:
            return None
        projects = session.execute(
            select(ProjectRow.name)
            .join(MembershipRow, MembershipRow.project_id == ProjectRow.id)
            .where(MembershipRow.user_id == user.id)
        ).scalars()
        return Identity(lane_of(set(scopes), user.is_admin), user.id, user.name, frozenset(projects))


def lane_of(scopes: set[str], is_admin: bool) -> Lane:
    """A token that can act for a user (user or admin scope) is user traffic, whatever else it
    carries; only pure agent tokens ride the system lane. A user cannot mint those (a token only
    carries scopes its creator's token has), so the lane is no way around the limits."""
    if is_admin and Scope.ADMIN in scopes:
        return Lane.ADMIN
    if scopes & {Scope.USER, Scope.ADMIN}:
        return Lane.USER
    return Lane.SYSTEM


class Identities:
    """Token hash -> identity, cached for ``ttl`` seconds, so a revocation reaches the limiter
    within about that (authentication itself never uses this cache). Once an entry is due, the
    next request starts a fresh read but still uses the old entry for up to ``_STALE`` seconds more,
    so known callers (the agents above all) never wait on the store here. Concurrent reads of one
    token are shared, and run on the event loop's default executor rather than the request thread
    pool, which a flood fills."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._cache: dict[str, tuple[float, Identity | None]] = {}  # digest -> (fresh until, identity)
        self._pending: dict[str, asyncio.Future[Identity | None]] = {}

    async def get(self, db: Database, digest: str) -> Identity | None:
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(lookup, db, digest, utcnow()))
            self._pending[digest] = pending
            pending.add_done_callback(lambda done: self._store(digest, done))
        if hit is not None and hit[0] + _STALE > now:
            return hit[1]
        return await asyncio.shield(pending)

    def _store(self, digest: str, done: asyncio.Future[Identity | None]) -> None:
        self._pending.pop(digest, None)
        if done.cancelled() or done.exception() is not None:
            return  # a failed read is not remembered; the next request tries again
        now = self.clock()
        self._cache.pop(digest, None)  # re-inserted last: the dict's order is the age order
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] + _STALE > now}
            while len(self._cache) >= _CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[digest] = (now + self.ttl, done.result())


@dataclass(frozen=True)
class Caller:
    """One request's place: its lane, its flow (whose queue and buckets it uses), how messages
    name it ("user 'ann'"), the projects it is charged to, and whether it is a long-lived stream."""

    lane: Lane
    flow: str
    name: str
    projects: tuple[str, ...] = ()
    stream: bool = False


@dataclass
class Ticket:
    """An admitted request: the seats it holds until its response starts."""

    caller: Caller
    pools: tuple[Pool, ...]
    seated: bool = True


def governed(path: str) -> bool:
    """The API and /metrics; health probes, the web UI and the schema are never limited."""
    return path.startswith("/api/") or path == "/metrics"


def long_lived(method: str, path: str, query: dict[str, list[str]]) -> bool:
    """A watch or a followed log: it streams for as long as the caller likes."""
    if method != "GET":
        return False
    flagged = any(v.lower() in _TRUE for key in ("watch", "follow") for v in query.get(key, ()))
    return flagged or path.endswith("/watch")


def named_project(path: str, query: dict[str, list[str]]) -> str | None:
    """The project a request names in its query or path, if any."""
    if query.get("project"):
        return query["project"][0]
    prefix = "/api/v1/projects/"
    if path.startswith(prefix):
        return path[len(prefix) :].split("/", 1)[0] or None
    return None


def _secret(scope: Scope_) -> str | None:
    """The bearer token, else the web session cookie (only without an Authorization header,
    as authentication reads them)."""
    headers = dict(scope.get("headers") or [])
    header = headers.get(b"authorization")
    if header is not None:
        kind, _, value = header.decode("latin-1").partition(" ")
        return value.strip() or None if kind.lower() == "bearer" else None
    cookies = headers.get(b"cookie")
    return cookie_parser(cookies.decode("latin-1")).get(SESSION_COOKIE) if cookies else None


class FairnessMetrics:
    """Admissions, queuing and refusals per lane, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tessera_api_fairness_requests",
            "Requests by lane and outcome: admitted, queued (waited for a seat; it is also counted "
            "admitted or refused), refused (429).",
            ["lane", "outcome"],
            registry=registry,
        )
        self.refusals = Counter(
            "tessera_api_fairness_refusals",
            "429s by lane and the limit that refused them.",
            ["lane", "limit"],
            registry=registry,
        )
        self.inflight = Gauge(
            "tessera_api_fairness_inflight",
            "Requests holding a seat (until their response starts).",
            ["lane"],
            registry=registry,
        )
        self.waiting = Gauge(
            "tessera_api_fairness_waiting", "Requests waiting for a seat.", ["lane"], registry=registry
        )
        self.streams = Gauge(
            "tessera_api_fairness_open_streams",
            "Open watches and followed logs.",
            ["lane"],
            registry=registry,
        )


class Fairness:
    """The limits of one app: who a request is, what it is charged, and its seats."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = FairnessMetrics(self.registry)
        self.identities = Identities(settings.api_identity_cache_seconds, clock)
        self.buckets = Buckets(clock)
        self.seats = Seats()
        self._streams: dict[str, int] = {}

    async def classify(self, scope: Scope_) -> Caller:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        stream = long_lived(scope.get("method", ""), scope["path"], query)
        secret = _secret(scope)
        db: Database | None = getattr(scope["app"].state, "db", None)
        if secret and db is not None:
            digest = hash_secret(secret)
            try:
                identity = await self.identities.get(db, digest)
            except Exception:
                # the store is failing (auth will say so); keep this token's traffic apart
                log.warning("could not look up a token for the API limits", exc_info=True)
                return Caller(Lane.USER, f"token {digest[:12]}", f"token {secret[:10]}...", (), stream)
            if identity is not None:
                flow = f"{identity.lane} {identity.user_id}"
                if identity.lane is Lane.SYSTEM:
                    flow = f"system {digest[:16]}"  # each agent token its own queue
                named = named_project(scope["path"], query)
                if named is None:
                    projects = tuple(sorted(identity.projects))
                else:
                    projects = (named,) if named in identity.projects else ()
                return Caller(identity.lane, flow, f"user {identity.user!r}", projects, stream)
        client = scope.get("client")
        address = client[0] if client else "unknown"
        return Caller(Lane.ANONYMOUS, f"address {address}", f"client address {address}", (), stream)

    def rates(self, caller: Caller) -> list[Rate]:
        s = self.settings
        if caller.lane is Lane.ANONYMOUS:
            return [
                Rate(
                    caller.flow,
                    s.api_anonymous_rate,
                    s.api_anonymous_burst,
                    "anonymous-rate",
                    f"the rate limit of requests without a valid token from {caller.name} "
                    f"({s.api_anonymous_rate:g}/s, burst {s.api_anonymous_burst}) is spent",
                )
            ]
        if caller.lane is not Lane.USER:
            return []
        rates = [
            Rate(
                caller.flow,
                s.api_user_rate,
                s.api_user_burst,
                "user-rate",
                f"{caller.name} has spent the per-user rate limit "
                f"({s.api_user_rate:g}/s, burst {s.api_user_burst})",
            )
        ]
        for project in caller.projects:
            rates.append(
                Rate(
                    f"project {project}",
                    s.api_project_rate,
                    s.api_project_burst,
                    "project-rate",
                    f"project {project!r} has spent the per-project rate limit its members share "
                    f"({s.api_project_rate:g}/s, burst {s.api_project_burst})",
                )
            )
        return rates

    def pools(self, caller: Caller) -> tuple[Pool, ...]:
        s, seats = self.settings, self.seats
        match caller.lane:
            case Lane.SYSTEM:
                return (seats.pool("the system lane", s.api_system_lane_seats),)
            case Lane.ADMIN:
                return (seats.pool("the admin lane", s.api_admin_lane_seats),)
            case Lane.ANONYMOUS:
                return (
                    seats.pool("the anonymous lane", s.api_anonymous_lane_seats),
                    seats.pool(caller.flow, s.api_anonymous_concurrency),
                )
        return (
            seats.pool("the user lane", s.api_user_lane_seats),
            seats.pool(caller.name, s.api_user_concurrency),
            *(seats.pool(f"project {p!r}", s.api_project_concurrency) for p in caller.projects),
        )

    async def admit(self, caller: Caller) -> Ticket:
        """Charge the request and seat it (waiting in its flow's queue if need be), or raise
        :class:`Refused`."""
        s, lane = self.settings, caller.lane
        capped = caller.stream and lane in (Lane.USER, Lane.ANONYMOUS)
        if capped and self._streams.get(caller.flow, 0) >= s.api_streams:
            raise Refused(
                "streams", f"{caller.name} already has {s.api_streams} watches or followed logs open", 5
            )
        if caller.stream:  # counted from here, so streams that wait for seats count too
            self._streams[caller.flow] = self._streams.get(caller.flow, 0) + 1
            self.metrics.streams.labels(lane).inc()
        try:
            self.buckets.take(self.rates(caller))
            pools = self.pools(caller)
            if not self.seats.try_acquire(caller.flow, pools):
                waiter = self.seats.enqueue(caller.flow, pools, s.api_queue_length)
                self.metrics.requests.labels(lane, "queued").inc()
                self.metrics.waiting.labels(lane).inc()
                try:
                    await self.seats.wait(caller.flow, waiter, s.api_queue_wait)
                finally:
                    self.metrics.waiting.labels(lane).dec()
        except BaseException:
            self._close_stream(caller)
            raise
        self.metrics.requests.labels(lane, "admitted").inc()
        self.metrics.inflight.labels(lane).inc()
        return Ticket(caller, pools)

    def unseat(self, ticket: Ticket) -> None:
        """Give the seats back (the response has started, or the request ended)."""
        if ticket.seated:
            ticket.seated = False
            self.metrics.inflight.labels(ticket.caller.lane).dec()
            self.seats.release(ticket.pools)

    def finish(self, ticket: Ticket) -> None:
        """The request has ended."""
        self.unseat(ticket)
        self._close_stream(ticket.caller)

    def _close_stream(self, caller: Caller) -> None:
        if caller.stream:
            left = self._streams.get(caller.flow, 1) - 1
            if left > 0:
                self._streams[caller.flow] = left
            else:
                self._streams.pop(caller.flow, None)
            self.metrics.streams.labels(caller.lane).dec()

    def refusal(self, caller: Caller, refused: Refused) -> JSONResponse:
        """The 429 problem document: its type and detail name the limit."""
        self.metrics.requests.labels(caller.lane, "refused").inc()
        self.metrics.refusals.labels(caller.lane, refused.limit).inc()
        problem = Problem(
            type=f"urn:tessera:api-limit:{refused.limit}",
            title="Too Many Requests",
            status=429,
            detail=f"too many requests ({refused.limit}): {refused.detail}; "
            f"retry after {refused.retry_after}s",
        )
        return problem_response(problem, {"Retry-After": str(refused.retry_after)})


class FairnessMiddleware:
    """Pure ASGI: admits, queues or refuses each API request; never buffers a response."""

    def __init__(self, app: ASGIApp, fairness: Fairness) -> None:
        self.app, self.fairness = app, fairness

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not governed(scope["path"]):
            await self.app(scope, receive, send)
            return
        fairness = self.fairness
        caller = await fairness.classify(scope)
        try:
            ticket = await fairness.admit(caller)
        except Refused as refused:
            await fairness.refusal(caller, refused)(scope, receive, send)
            return

        async def unseating(message: Message) -> None:
            if message["type"] == "http.response.start":
                fairness.unseat(ticket)  # a stream streams on without its seat
            await send(message)

        try:
            await self.app(scope, receive, unseating)
        finally:
            fairness.finish(ticket)


def install(app: FastAPI, settings: Settings, registry: CollectorRegistry | None = None) -> Fairness | None:
    """Enforce the limits on ``app`` (unless ``settings.api_fairness`` is off); metrics go to
    ``registry``. The middleware goes innermost, inside the API metrics' middleware, so 429s are
    counted with every other answer."""
    if not settings.api_fairness:
        return None
    fairness = Fairness(settings, registry)
    app.user_middleware.append(Middleware(FairnessMiddleware, fairness=fairness))
    app.state.fairness = fairness
    return fairness
