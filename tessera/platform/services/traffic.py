"""What the gateways report, kept in the control plane's memory for the autoscaler and the API.

Like Knative's autoscaler, which keeps the metrics it scrapes in memory, this holds a few minutes of
samples: per revision, each gateway's time-averaged concurrency (the KPA windows), its held
requests, and completed requests with their latencies; per replica, each gateway's in-flight
count and the route-table revision it applies (to know when a drain has taken effect there).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tessera.api.serving import GatewayReport, RevisionMetrics
from tessera.platform.controllers.kpa import ConcurrencyWindow

HORIZON_S = 600.0  # the longest stable window kept
METRICS_WINDOW_S = 60.0  # RPS, latency and errors are over the last minute
GATEWAY_STALE_S = 10.0  # a gateway silent this long no longer counts


@dataclass
class _Revision:
    window: ConcurrencyWindow = field(default_factory=lambda: ConcurrencyWindow(HORIZON_S))
    held: dict[str, tuple[float, int]] = field(default_factory=dict)  # gateway -> (at, held)
    latest: dict[str, tuple[float, float]] = field(default_factory=dict)  # gateway -> (at, concurrency)
    # (at, requests, errors, latencies ms) per report
    completed: deque[tuple[float, int, int, list[float]]] = field(default_factory=deque)
    first_at: float | None = None


@dataclass
class _Gateway:
    url: str
    at: float
    routes_revision: int
    in_flight: dict[uuid.UUID, int]


class Traffic:
    """Thread-safe: the API's report handler writes, the serving controller and API readers read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revisions: dict[tuple[uuid.UUID, int], _Revision] = {}
        self._gateways: dict[str, _Gateway] = {}

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def record(self, report: GatewayReport, now: float | None = None) -> None:
        now = self.now() if now is None else now
        # two gateways may share a name (each defaults to "gateway"): their URLs tell them apart
        gateway = f"{report.gateway}@{report.url}"
        with self._lock:
            self._gateways[gateway] = _Gateway(
                url=report.url,
                at=now,
                routes_revision=report.routes_revision,
                in_flight={r.replica_id: r.in_flight for r in report.replicas},
            )
            for sample in report.revisions:
                rev = self._revisions.setdefault((sample.service_id, sample.revision), _Revision())
                rev.window.record(
                    gateway, at=now, concurrency=sample.concurrency, interval_s=report.interval_s
                )
                rev.held[gateway] = (now, sample.held)
                rev.latest[gateway] = (now, sample.concurrency)
                if rev.first_at is None:
                    rev.first_at = now - report.interval_s
                if sample.requests or sample.errors:
                    rev.completed.append((now, sample.requests, sample.errors, list(sample.latencies_ms)))
                while rev.completed and rev.completed[0][0] < now - METRICS_WINDOW_S:
                    rev.completed.popleft()
                rev.window.prune(now)

    def retain(self, service_ids: set[uuid.UUID]) -> None:
        """Forget what was reported for services that no longer exist."""
        with self._lock:
            for key in [k for k in self._revisions if k[0] not in service_ids]:
                del self._revisions[key]

    def _live(self, now: float) -> dict[str, _Gateway]:
        return {name: g for name, g in self._gateways.items() if now - g.at <= GATEWAY_STALE_S}

    def window(self, service_id: uuid.UUID, revision: int) -> ConcurrencyWindow | None:
        with self._lock:
            rev = self._revisions.get((service_id, revision))
            return rev.window if rev else None

    def held(self, service_id: uuid.UUID, revision: int, now: float | None = None) -> int:
        now = self.now() if now is None else now
        with self._lock:
            rev = self._revisions.get((service_id, revision))
            if rev is None:
                return 0
            return sum(n for at, n in rev.held.values() if now - at <= GATEWAY_STALE_S)

    def drained(self, replica_id: uuid.UUID, drain_revision: int, now: float | None = None) -> bool:
        """Whether every live gateway applies a route table that drains the replica (one at least at
        ``drain_revision``) and has no request in flight on it. True when no gateway reports."""
        now = self.now() if now is None else now
        with self._lock:
            for gateway in self._live(now).values():
                if gateway.routes_revision < drain_revision or gateway.in_flight.get(replica_id, 0) > 0:
                    return False
            return True

    def gateway_url(self, now: float | None = None) -> str | None:
        """The most recently reporting live gateway's URL."""
        now = self.now() if now is None else now
        with self._lock:
            live = sorted(self._live(now).values(), key=lambda g: g.at)
            return live[-1].url if live else None

    def metrics(self, service_id: uuid.UUID, revision: int, now: float | None = None) -> RevisionMetrics:
        now = self.now() if now is None else now
        with self._lock:
            rev = self._revisions.get((service_id, revision))
            if rev is None:
                return RevisionMetrics()
            recent = [c for c in rev.completed if c[0] >= now - METRICS_WINDOW_S]
            requests = sum(c[1] for c in recent)
            errors = sum(c[2] for c in recent)
            latencies = [x for c in recent for x in c[3]]
            span = min(METRICS_WINDOW_S, max(now - (rev.first_at or now), 1.0))
            concurrency = sum(c for at, c in rev.latest.values() if now - at <= GATEWAY_STALE_S)
            held = sum(n for at, n in rev.held.values() if now - at <= GATEWAY_STALE_S)
        p50 = p99 = None
        if latencies:
            p50, p99 = (round(float(v), 2) for v in np.percentile(latencies, [50, 99]))
        return RevisionMetrics(
            rps=round(requests / span, 2),
            p50_ms=p50,
            p99_ms=p99,
            requests=requests,
            errors=errors,
            in_flight=round(concurrency, 2),
            held=held,
        )
