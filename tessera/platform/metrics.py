"""Prometheus metrics of one control-plane app (its own registry, no globals)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tessera.api.cluster import NodeState
from tessera.api.usage import NodeUsage
from tessera.platform.services.traffic import Traffic
from tessera.platform.store.db import Database
from tessera.platform.store.rows import (
    DataLoadRow,
    DatasetCacheRow,
    DatasetRow,
    JobRow,
    NodeRow,
    ProjectRow,
    ReplicaRow,
    RevisionRow,
    ServiceRevisionRow,
    ServiceRow,
)

_GPU = ["node", "gpu", "model"]
_SLICE = ["node", "gpu", "slice", "job", "project", "task", "tier"]


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


class UsageCollector(Collector):
    """Per GPU and per slice gauges from what Ready nodes last measured (allocation beside use)."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        g = {
            "memory": gauge("tessera_gpu_memory_mib", "GPU memory.", _GPU),
            "allocated": gauge("tessera_gpu_memory_allocated_mib", "GPU memory given to slices.", _GPU),
            "used": gauge("tessera_gpu_memory_used_mib", "GPU memory in use (all processes).", _GPU),
            "compute": gauge("tessera_gpu_compute_allocated_pct", "Compute share given to slices.", _GPU),
            "util": gauge("tessera_gpu_utilization_pct", "Percent of time a kernel ran.", _GPU),
            "stray": gauge(
                "tessera_gpu_unattributed_processes", "Processes on the GPU that no slice accounts for.", _GPU
            ),
            "lost": gauge("tessera_gpu_lost", "1 when the GPU cannot be read (fell off the bus).", _GPU),
            "tier": gauge("tessera_gpu_tier", "Enforcement tiers this GPU offers (1 each).", [*_GPU, "tier"]),
        }
        s = {
            "memory": gauge("tessera_slice_memory_allocated_mib", "Slice memory limit.", _SLICE),
            "used": gauge("tessera_slice_memory_used_mib", "Memory its processes hold.", _SLICE),
            "compute": gauge("tessera_slice_compute_allocated_pct", "Slice compute share.", _SLICE),
            "share": gauge("tessera_slice_compute_share_pct", "Measured compute share (window).", _SLICE),
            "throttled": gauge(
                "tessera_slice_throttled_pct", "Percent of the window its processes were stopped.", _SLICE
            ),
        }
        with self.db().read() as session:
            rows = session.execute(
                select(NodeRow.name, NodeRow.usage).where(NodeRow.state == NodeState.READY.value)
            ).all()
        for name, doc in rows:
            if not doc:
                continue
            usage = NodeUsage.model_validate(doc)
            for gpu in usage.gpus:
                labels = [name, gpu.uuid, gpu.model]
                g["memory"].add_metric(labels, gpu.memory_mib)
                g["allocated"].add_metric(labels, gpu.allocated_memory_mib)
                g["compute"].add_metric(labels, gpu.allocated_compute_pct)
                g["stray"].add_metric(labels, len(gpu.unattributed))
                g["lost"].add_metric(labels, 1 if gpu.lost else 0)
                if gpu.used_memory_mib is not None:
                    g["used"].add_metric(labels, gpu.used_memory_mib)
                if gpu.utilization_pct is not None:
                    g["util"].add_metric(labels, gpu.utilization_pct)
                for tier in gpu.tiers:
                    g["tier"].add_metric([*labels, tier], 1)
            for sl in usage.slices:
                labels = [name, sl.gpu_uuid, str(sl.slice_id), sl.job, sl.project, sl.task, sl.tier]
                s["memory"].add_metric(labels, sl.memory_mib)
                s["compute"].add_metric(labels, sl.compute_pct)
                s["throttled"].add_metric(labels, sl.throttled_pct)
                if sl.used_memory_mib is not None:
                    s["used"].add_metric(labels, sl.used_memory_mib)
                if sl.share_pct is not None:
                    s["share"].add_metric(labels, sl.share_pct)
        yield from g.values()
        yield from s.values()


class DatasetCollector(Collector):
    """Per dataset and node: cached bytes and share, reads by where they were served; loads by state."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["project", "dataset", "node"]
        cached = GaugeMetricFamily(
            "tessera_dataset_cached_bytes", "Bytes of a dataset a node holds.", labels=labels
        )
        percent = GaugeMetricFamily(
            "tessera_dataset_cached_percent", "Share of a dataset a node holds.", labels=labels
        )
        reads = GaugeMetricFamily(
            "tessera_dataset_reads",
            "File reads by where they were served (running totals).",
            labels=[*labels, "from"],
        )
        total = GaugeMetricFamily(
            "tessera_dataset_bytes", "A dataset's size at its source.", labels=labels[:2]
        )
        loads = GaugeMetricFamily("tessera_dataset_loads", "Loads by state.", labels=["state"])
        with self.db().read() as session:
            names = {
                d.id: (p, d.name, (d.status or {}).get("total_bytes"))
                for d, p in session.execute(
                    select(DatasetRow, ProjectRow.name).join(
                        ProjectRow, ProjectRow.id == DatasetRow.project_id
                    )
                ).all()
            }
            for project, name, size in names.values():
                if size is not None:
                    total.add_metric([project, name], size)
            for c in session.execute(select(DatasetCacheRow)).scalars():
                if c.dataset_id not in names:
                    continue
                project, name, size = names[c.dataset_id]
                cached.add_metric([project, name, c.node], c.cached_bytes)
                percent.add_metric([project, name, c.node], 100.0 * c.cached_bytes / size if size else 0.0)
                for where, count in (
                    ("local", c.local_hits),
                    ("peer", c.peer_hits),
                    ("source", c.source_reads),
                ):
                    reads.add_metric([project, name, c.node, where], count)
            for state, count in session.execute(
                select(DataLoadRow.state, func.count()).group_by(DataLoadRow.state)
            ):
                loads.add_metric([state], count)
        yield from (total, cached, percent, reads, loads)


class ServingCollector(Collector):
    """Per service revision: traffic, desired and ready replicas, and the gateways' measurements."""

    def __init__(self, db: Callable[[], Database], traffic: Callable[[], Traffic]) -> None:
        self.db, self.traffic = db, traffic

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["project", "service", "revision"]
        families = {
            "traffic": GaugeMetricFamily(
                "tessera_service_traffic_percent", "Share of a service's traffic.", labels=labels
            ),
            "desired": GaugeMetricFamily(
                "tessera_service_desired_replicas", "Replicas the autoscaler wants.", labels=labels
            ),
            "ready": GaugeMetricFamily("tessera_service_ready_replicas", "Ready replicas.", labels=labels),
            "rps": GaugeMetricFamily(
                "tessera_service_rps", "Requests per second (last minute).", labels=labels
            ),
            "p50": GaugeMetricFamily(
                "tessera_service_latency_p50_seconds", "Median latency (last minute).", labels=labels
            ),
            "p99": GaugeMetricFamily(
                "tessera_service_latency_p99_seconds", "99th percentile latency (last minute).", labels=labels
            ),
            "errors": GaugeMetricFamily(
                "tessera_service_errors", "Errors in the last minute.", labels=labels
            ),
            "concurrency": GaugeMetricFamily(
                "tessera_service_concurrency", "In-flight and held requests at the gateways.", labels=labels
            ),
        }
        traffic = self.traffic()
        with self.db().read() as session:
            ready: dict[tuple[object, int], int] = {}
            for service_id, number in session.execute(
                select(ReplicaRow.service_id, ReplicaRow.revision_number).where(ReplicaRow.state == "Ready")
            ).all():
                ready[(service_id, number)] = ready.get((service_id, number), 0) + 1
            rows = session.execute(
                select(ServiceRevisionRow, ServiceRow.name, ProjectRow.name)
                .join(ServiceRow, ServiceRow.id == ServiceRevisionRow.service_id)
                .join(ProjectRow, ProjectRow.id == ServiceRow.project_id)
            ).all()
            for rev, service, project in rows:
                key = [project, service, str(rev.number)]
                m = traffic.metrics(rev.service_id, rev.number)
                families["traffic"].add_metric(key, rev.traffic_percent)
                families["desired"].add_metric(key, rev.desired_replicas)
                families["ready"].add_metric(key, ready.get((rev.service_id, rev.number), 0))
                families["rps"].add_metric(key, m.rps)
                families["errors"].add_metric(key, m.errors)
                families["concurrency"].add_metric(key, m.in_flight)
                if m.p50_ms is not None and m.p99_ms is not None:
                    families["p50"].add_metric(key, m.p50_ms / 1000)
                    families["p99"].add_metric(key, m.p99_ms / 1000)
        yield from families.values()


class Metrics:
    def __init__(self, db: Callable[[], Database], traffic: Callable[[], Traffic] | None = None) -> None:
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
        self.registry.register(UsageCollector(db))
        self.registry.register(DatasetCollector(db))
        if traffic is not None:
            self.registry.register(ServingCollector(db, traffic))

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
