"""Prometheus metrics of one control-plane app (its own registry, no globals)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow, NodeRow, RevisionRow


class StoreCollector(Collector):
    """Gauges read from the store at scrape time."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("tessera_jobs", "Jobs by state.", labels=["state"])
        nodes = GaugeMetricFamily("tessera_nodes", "Nodes by state.", labels=["state"])
        revision = GaugeMetricFamily("tessera_store_revision", "Change-feed revision.")
        with self.db().read() as session:
            for state, count in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
                jobs.add_metric([state], count)
            for state, count in session.execute(select(NodeRow.state, func.count()).group_by(NodeRow.state)):
                nodes.add_metric([state], count)
            revision.add_metric([], session.execute(select(RevisionRow.revision)).scalar_one())
        yield jobs
        yield nodes
        yield revision


class Metrics:
    def __init__(self, db: Callable[[], Database]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tessera_http_requests",
            "HTTP requests.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(db))

    def install(self, app: FastAPI) -> None:
        @app.middleware("http")
        async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            start = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(request.method, path, str(response.status_code)).inc()
            self.latency.labels(request.method, path).observe(time.perf_counter() - start)
            return response
