"""The applied route table: services by name, the traffic split between their revisions (smooth
weighted round-robin) and the choice of a replica within a revision (fewest in flight among the
ready, non-draining ones). Everything runs on the gateway's event loop, so nothing is locked."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid

from tessera.api.serving import Route, RouteTable
from tessera.gateway.metrics import Metrics, RevisionStats

log = logging.getLogger(__name__)


class ReplicaState:
    """What this gateway knows of one replica: its readiness (own probe) and its load from here."""

    __slots__ = (
        "id",
        "id_header",
        "endpoint",
        "draining",
        "ready",
        "in_flight",
        "probing",
        "last_probe",
        "path",
        "failures",
    )

    def __init__(self, id: uuid.UUID, endpoint: str, draining: bool, path: str) -> None:
        self.id = id
        self.id_header = str(id).encode()
        self.endpoint = endpoint
        self.draining = draining
        self.path = path  # the readiness path
        self.ready = False
        self.in_flight = 0
        self.probing = False
        self.last_probe = float("-inf")
        self.failures = 0  # requests that could not connect; a probe started before one is stale

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining


class RevisionState:
    """A revision's replicas and its traffic stats; the object lives as long as the revision is
    in the table, so requests held on it see replicas the table adds later."""

    __slots__ = ("service_id", "number", "number_header", "percent", "replicas", "stats", "removed", "_next")

    def __init__(self, service_id: uuid.UUID, number: int, stats: RevisionStats) -> None:
        self.service_id = service_id
        self.number = number
        self.number_header = str(number).encode()
        self.percent = 0
        self.replicas: list[ReplicaState] = []
        self.stats = stats
        self.removed = False
        self._next = 0

    def pick(self) -> ReplicaState | None:
        """The routable replica with the fewest requests in flight from this gateway; ties go
        round-robin (the scan starts one further each time)."""
        replicas = self.replicas
        count = len(replicas)
        if count == 0:
            return None
        start = self._next % count
        self._next = start + 1
        best: ReplicaState | None = None
        for offset in range(count):
            replica = replicas[(start + offset) % count]
            if (
                replica.ready
                and not replica.draining
                and (best is None or replica.in_flight < best.in_flight)
            ):
                best = replica
                if replica.in_flight == 0:
                    break
        return best


class WeightedSplit:
    """Smooth weighted round-robin (as in nginx): deterministic and evenly interleaved, so out of
    every 100 picks exactly ``percent`` go to each revision."""

    __slots__ = ("numbers", "weights", "current", "total")

    def __init__(self, weights: dict[int, int]) -> None:
        self.numbers = [n for n, w in sorted(weights.items()) if w > 0]
        self.weights = [weights[n] for n in self.numbers]
        self.current = [0] * len(self.numbers)
        self.total = sum(self.weights)

    def key(self) -> tuple[tuple[int, int], ...]:
        return tuple(zip(self.numbers, self.weights, strict=True))

    def next(self) -> int | None:
        if not self.numbers:
            return None
        current = self.current
        best = 0
        for i, weight in enumerate(self.weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return self.numbers[best]


class RouteState:
    """One service's route: auth, its revisions and the split between them."""

    __slots__ = ("route", "name", "revisions", "split", "_token")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.name = route.name
        self.revisions: dict[int, RevisionState] = {}
        self.split = WeightedSplit({})
        self._token = (route.token_sha256 or "").lower().encode()

    def authorized(self, authorization: str | None) -> bool:
        """Whether the request may use this service: public, or a bearer token whose sha256 matches."""
        if self.route.public:
            return True
        if not authorization or not self._token:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest().encode()
        return hmac.compare_digest(digest, self._token)

    def choose(self) -> RevisionState | None:
        """The revision for the next request, per the traffic split."""
        number = self.split.next()
        return None if number is None else self.revisions[number]


class Router:
    """The route table this gateway applies, and a way to wait until it (or a replica's readiness)
    changes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.revision = -1  # no table applied yet
        self.routes: dict[str, RouteState] = {}
        self.replicas: dict[uuid.UUID, ReplicaState] = {}
        self._changed = asyncio.Event()

    @property
    def synced(self) -> bool:
        return self.revision >= 0

    def keys(self) -> set[tuple[uuid.UUID, int]]:
        return {(r.service_id, n) for route in self.routes.values() for n, r in route.revisions.items()}

    def changed(self) -> None:
        """Wake every request waiting for a replica."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_changed(self, timeout: float) -> None:
        """Until the next ``changed()`` or ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def replica_failed(self, replica: ReplicaState) -> None:
        """A connection to it failed: no requests until its readiness probe passes again."""
        replica.ready = False
        replica.failures += 1
        replica.last_probe = float("-inf")

    def apply(self, table: RouteTable) -> None:
        """Make ``table`` the one in force. Replica readiness and revision state carry over for
        ids that stay; a replica whose endpoint changed starts unready."""
        old_routes = {state.route.service_id: state for state in self.routes.values()}
        routes: dict[str, RouteState] = {}
        replicas: dict[uuid.UUID, ReplicaState] = {}
        for route in table.services:
            previous = old_routes.pop(route.service_id, None)
            state = RouteState(route)
            for revision in route.revisions:
                rev = previous.revisions.pop(revision.number, None) if previous else None
                if rev is None:
                    stats = self.metrics.revision(route.service_id, route.name, revision.number)
                    rev = RevisionState(route.service_id, revision.number, stats)
                rev.percent = revision.percent
                rev.replicas = []
                for item in revision.replicas:
                    replica = self.replicas.get(item.id)
                    if replica is None or replica.endpoint != item.endpoint:
                        replica = ReplicaState(item.id, item.endpoint, item.draining, route.readiness_path)
                    replica.draining = item.draining
                    replica.path = route.readiness_path
                    replicas[item.id] = replica
                    rev.replicas.append(replica)
                state.revisions[revision.number] = rev
            split = WeightedSplit({n: max(r.percent, 0) for n, r in state.revisions.items()})
            if previous is not None and previous.split.key() == split.key():
                split = previous.split  # keep the round-robin position
            state.split = split
            if previous is not None:
                for gone in previous.revisions.values():
                    gone.removed = True
            if route.name in routes:
                log.warning("route table names service %r twice; using the last", route.name)
            routes[route.name] = state
        for gone_route in old_routes.values():
            for gone in gone_route.revisions.values():
                gone.removed = True
        if table.revision != self.revision:
            log.debug("route table revision %d applied (%d services)", table.revision, len(routes))
        self.routes = routes
        self.replicas = replicas
        self.revision = table.revision
        self.changed()

    def find(self, service_id: uuid.UUID) -> RouteState | None:
        for state in self.routes.values():
            if state.route.service_id == service_id:
                return state
        return None
