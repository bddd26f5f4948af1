"""Traffic accounting: per-revision report windows (time-weighted concurrency, counts, a latency
reservoir) for the control plane's autoscaler, and the Prometheus series behind ``/metrics``."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tessera.api.serving import LATENCY_SAMPLES_MAX, RevisionSample

__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics", "RevisionStats", "code_class"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def code_class(status: int) -> str:
    """``200`` -> ``"2xx"``."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


@dataclass(eq=False)
class _Series:
    """One revision's Prometheus children, resolved once (label lookups are not free)."""

    in_flight: Gauge
    held: Gauge
    duration: Histogram
    requests: dict[str, Counter] = field(default_factory=dict)


class RevisionStats:
    """One (service, revision)'s traffic since the last report, and its live in-flight/held counts.

    Concurrency is integrated over time: ``area`` grows by ``active * dt`` on every change, so a
    request that lasted half the interval adds 0.5 to the average. Held requests count as active."""

    __slots__ = (
        "service_id",
        "service",
        "revision",
        "active",
        "held",
        "requests",
        "errors",
        "area",
        "last",
        "latencies",
        "seen",
        "_metrics",
        "_series",
    )

    def __init__(self, metrics: Metrics, service_id: uuid.UUID, service: str, revision: int) -> None:
        self.service_id = service_id
        self.service = service
        self.revision = revision
        self.active = 0
        self.held = 0
        self.requests = 0
        self.errors = 0
        self.area = 0.0
        self.last = time.monotonic()
        self.latencies: list[float] = []
        self.seen = 0
        self._metrics = metrics
        self._series = metrics.series(service, revision)

    def _advance(self, now: float) -> None:
        self.area += self.active * (now - self.last)
        self.last = now

    def enter(self) -> None:
        """A request was routed to this revision (held or not)."""
        self._advance(time.monotonic())
        self.active += 1
        self._series.in_flight.inc()

    def leave(self, status: int | None, seconds: float) -> None:
        """The request ended; ``status`` None means it was not answered (client gone, moved)."""
        self._advance(time.monotonic())
        self.active -= 1
        self._series.in_flight.dec()
        if status is None:
            return
        self.requests += 1
        if status >= 500:
            self.errors += 1
        self._series.duration.observe(seconds)
        klass = code_class(status)
        counter = self._series.requests.get(klass)
        if counter is None:
            counter = self._metrics.requests_total.labels(self.service, str(self.revision), klass)
            self._series.requests[klass] = counter
        counter.inc()
        self.seen += 1
        ms = seconds * 1000.0
        if len(self.latencies) < LATENCY_SAMPLES_MAX:
            self.latencies.append(ms)
        else:  # reservoir sampling (algorithm R): every request equally likely to be kept
            slot = random.randrange(self.seen)
            if slot < LATENCY_SAMPLES_MAX:
                self.latencies[slot] = ms

    def hold(self, delta: int) -> None:
        """``+1`` when a request starts waiting for a ready replica, ``-1`` when it stops."""
        self.held += delta
        self._metrics.held_total += delta
        self._series.held.inc(delta)

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.requests > 0 or self.area > 0

    def snapshot(self, now: float, interval: float) -> RevisionSample:
        """The window's sample; starts the next window."""
        self._advance(now)
        sample = RevisionSample(
            service_id=self.service_id,
            revision=self.revision,
            concurrency=max(self.area / interval, 0.0),
            held=self.held,
            requests=self.requests,
            errors=self.errors,
            latencies_ms=self.latencies,
        )
        self.area = 0.0
        self.requests = self.errors = self.seen = 0
        self.latencies = []
        return sample


class Metrics:
    """All revisions' stats, keyed by (service id, revision number), and the Prometheus registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("service", "revision")
        self.requests_total = Counter(
            "tessera_gateway_requests",
            "Requests answered, by service, revision and status class.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "tessera_gateway_request_duration_seconds",
            "Time from arrival to the last byte of the response, holding included.",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "tessera_gateway_in_flight",
            "Requests in flight, held ones included.",
            labels,
            registry=self.registry,
        )
        self.held = Gauge(
            "tessera_gateway_held", "Requests waiting for a ready replica.", labels, registry=self.registry
        )
        self.rejected = Counter(
            "tessera_gateway_rejected",
            "Requests answered before routing: unknown (404), unauthorized (401), and the 503s "
            "not_synced (no route table yet) and no_revision (no revision takes traffic).",
            ("reason",),
            registry=self.registry,
        )
        self.reports = Counter(
            "tessera_gateway_reports", "Reports sent to the control plane, by outcome.", ("outcome",),
            registry=self.registry,
        )  # fmt: skip
        self.held_total = 0
        self.stats: dict[tuple[uuid.UUID, int], RevisionStats] = {}

    def series(self, service: str, revision: int) -> _Series:
        labels = (service, str(revision))
        return _Series(
            in_flight=self.in_flight.labels(*labels),
            held=self.held.labels(*labels),
            duration=self.duration.labels(*labels),
        )

    def revision(self, service_id: uuid.UUID, service: str, revision: int) -> RevisionStats:
        """The stats of a revision, created on first use."""
        key = (service_id, revision)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = RevisionStats(self, service_id, service, revision)
        return stats

    def snapshot(
        self, interval: float, keep: set[tuple[uuid.UUID, int]], now: float | None = None
    ) -> list[RevisionSample]:
        """Samples of every revision in ``keep`` (the route table) and of any other still busy;
        forgets idle revisions no longer in the table."""
        now = time.monotonic() if now is None else now
        samples = []
        for key, stats in list(self.stats.items()):
            if key not in keep and not stats.busy:
                del self.stats[key]
                self._forget(stats)
                continue
            samples.append(stats.snapshot(now, interval))
        return samples

    def _forget(self, stats: RevisionStats) -> None:
        labels = (stats.service, str(stats.revision))
        for metric in (self.in_flight, self.held, self.duration):
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        for klass in list(stats._series.requests):
            try:
                self.requests_total.remove(*labels, klass)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
