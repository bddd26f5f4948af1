"""Prometheus metrics of one control-plane app (its own registry, no globals): the golden
signals of the API, the scheduling loop and the node agents (docs/slos.md), and gauges read
from the store at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as Scope_

from tessera.api.cluster import NodeState
from tessera.api.identity import Scope
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
from tessera.platform.store.types import utcnow
from tessera.scheduler.model import PendingJob

_GPU = ["node", "gpu", "model"]
_SLICE = ["node", "gpu", "slice", "job", "project", "task", "tier"]


class StoreCollector(Collector):
    """Gauges read from the store at scrape time."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("tessera_jobs", "Jobs by state.", labels=["state"])
        nodes = GaugeMetricFamily("tessera_nodes", "Nodes by state.", labels=["state"])
        revision = GaugeMetricFamily("tessera_store_revision", "Change-feed revision.")
        age = GaugeMetricFamily(
            "tessera_node_heartbeat_age_seconds",
            "Seconds since a node agent's last heartbeat reached the control plane.",
            labels=["node", "state"],
        )
        db = self.db()
        now = utcnow()
        with db.read() as session:
            for state, count in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
                jobs.add_metric([state], count)
            for state, count in session.execute(select(NodeRow.state, func.count()).group_by(NodeRow.state)):
                nodes.add_metric([state], count)
            revision.add_metric([], session.execute(select(RevisionRow.revision)).scalar_one())
            for name, state, seen in session.execute(
                select(NodeRow.name, NodeRow.state, NodeRow.last_heartbeat_at)
            ):
                if seen is not None:
                    age.add_metric([name, state], max((now - seen).total_seconds(), 0.0))
        yield from (jobs, nodes, revision, age)
        yield from _pool(db)
        yield from _writers(db)


def _writers(db: Database) -> Iterator[Metric]:
    """The single writer's saturation: the wait for SQLite's writer slot, and how long write
    transactions take (hold the slot, on SQLite)."""
    yield from db.write_wait.collect()
    yield from db.write_held.collect()


def _pool(db: Database) -> Iterator[GaugeMetricFamily]:
    """The connection pool's saturation; only pools that count connections (not SQLite's
    single-connection pools) have these numbers."""
    pool = db.engine.pool
    checkedout, size = getattr(pool, "checkedout", None), getattr(pool, "size", None)
    if callable(checkedout):
        used = GaugeMetricFamily(
            "tessera_db_pool_checked_out_connections", "Database connections in use (checked out)."
        )
        used.add_metric([], checkedout())
        yield used
    if callable(size):
        total = GaugeMetricFamily(
            "tessera_db_pool_size", "Connections the pool keeps (overflow may add as many again)."
        )
        total.add_metric([], size())
        yield total


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


# p50 and p99 from 5 ms to 10 s: SLO thresholds (0.5 s, 1 s) sit on bucket bounds, so a check
# against them is exact rather than interpolated
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ADMIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def status_class(status: int) -> str:
    """``404`` -> ``"4xx"``."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def caller_of(principal: object) -> str:
    """The caller class of an authenticated principal (a token's scopes say which agent it is);
    ``anonymous`` when the request carried none it could use (open routes, 401s)."""
    scopes = getattr(principal, "scopes", None)
    if scopes is None:
        return "anonymous"
    for scope in (Scope.NODE, Scope.GATEWAY, Scope.METRICS):
        if scope in scopes:
            return scope.value
    return "admin" if getattr(principal, "admin", False) else "user"


class ApiMetrics:
    """The API's golden signals: rate and errors (a counter by status class), latency (to the
    response's first byte, so a watch counts the time to start streaming) and saturation."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tessera_api_requests",
            "API requests by route template, status class (2xx..5xx) and caller class.",
            ["method", "route", "status_class", "caller"],
            registry=registry,
        )
        self.duration = Histogram(
            "tessera_api_request_duration_seconds",
            "Time from a request's arrival to its response's first byte.",
            ["method", "route", "caller"],
            buckets=API_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "tessera_api_inflight_requests",
            "Requests being worked on (no response started yet).",
            registry=registry,
        )
        self.streaming = Gauge(
            "tessera_api_open_responses",
            "Responses started and not yet finished: mostly watches and followed logs.",
            registry=registry,
        )

    def observe(self, scope: Scope_, root: str, status: int, seconds: float) -> None:
        method = scope.get("method", "")
        caller = caller_of(scope.get("state", {}).get("principal"))
        route = _route(scope, root)
        self.requests.labels(method, route, status_class(status), caller).inc()
        self.duration.labels(method, route, caller).observe(seconds)


def _route(scope: Scope_, root: str) -> str:
    """The route template, never the raw path (bounded label values). FastAPI's matched route
    may know only its path below its router's prefix: the prefix is what of the path precedes
    the part the route matched (prefixes here are literal)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        path: str = scope.get("path", "")
        matched = template
        for name, value in scope.get("path_params", {}).items():
            matched = matched.replace("{" + name + "}", str(value))
        if not path.endswith(matched):
            return template
        prefix = path[: len(path) - len(matched)]
        return prefix.removeprefix(root) + template if prefix.startswith(root) else template
    mounted = scope.get("root_path", "")
    if mounted != root and mounted.startswith(root):  # a mount (the web UI's static files)
        return mounted[len(root) :] + "/*"
    return "unmatched"


class ApiMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware buffering): observes every HTTP request."""

    def __init__(self, app: ASGIApp, api: ApiMetrics) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        root = scope.get("root_path", "")
        scope.setdefault("state", {})  # the dict the auth dependency records the principal in
        started = False

        async def observed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.api.inflight.dec()
                self.api.streaming.inc()
                self.api.observe(scope, root, int(message["status"]), time.perf_counter() - start)
            await send(message)

        self.api.inflight.inc()
        try:
            await self.app(scope, receive, observed)
        finally:
            if started:
                self.api.streaming.dec()
            else:  # it raised before answering: the server's error middleware sends a 500
                self.api.inflight.dec()
                self.api.observe(scope, root, 500, time.perf_counter() - start)


class SchedulerMetrics(Collector):
    """The scheduling loop's golden signals; the loop calls these hooks, the registry scrapes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.cycle = Histogram(
            "tessera_scheduler_cycle_seconds",
            "A scheduling pass that ran a cycle: sync with the feed, decide, bind and write reasons.",
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.decide = Histogram(
            "tessera_scheduler_decide_seconds",
            "The scheduler's decisions alone (in memory, no database).",
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.time_to_admit = Histogram(
            "tessera_scheduler_time_to_admit_seconds",
            "From a job's submission to its first bind (requeued attempts are not counted).",
            ["queue"],
            buckets=ADMIT_BUCKETS,
            registry=registry,
        )
        self.cycles = counter("tessera_scheduler_cycles", "Scheduling cycles run.")
        self.failed_cycles = counter(
            "tessera_scheduler_failed_cycles", "Scheduling passes that raised (retried next interval)."
        )
        self.binds = counter("tessera_scheduler_binds", "Jobs bound to slices.")
        self.failed_binds = counter(
            "tessera_scheduler_failed_binds",
            "Binds not made: conflict (the job or capacity changed since the snapshot) or error.",
            ("reason",),
        )
        self.evictions = counter("tessera_scheduler_evictions", "Jobs evicted (preempted or reclaimed).")
        self.last_cycle = Gauge(
            "tessera_scheduler_last_cycle_timestamp_seconds",
            "When this process last ran a cycle (0: never; a standby never does).",
            registry=registry,
        )
        self._pending: dict[str, int] = {}
        registry.register(self)

    def pending(self, jobs: Iterable[PendingJob]) -> None:
        """The pending depth of a cycle's snapshot, by queue."""
        depth: dict[str, int] = {}
        for job in jobs:
            depth[job.queue] = depth.get(job.queue, 0) + 1
        self._pending = depth  # swapped whole: a scrape sees one cycle's numbers, never a mix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tessera_scheduler_pending_jobs", "Pending jobs in the last cycle's snapshot.", labels=["queue"]
        )
        for queue, count in sorted(self._pending.items()):
            gauge.add_metric([queue], count)
        yield gauge


def scheduler_metrics(registry: CollectorRegistry | None = None) -> SchedulerMetrics:
    """Scheduler metrics on ``registry``; without one, on a private registry nobody scrapes."""
    return SchedulerMetrics(registry or CollectorRegistry())


class Metrics:
    """One control plane's metrics: its own registry, the API middleware, the scheduler's hooks
    (``metrics.scheduler``, passed to the SchedulingLoop) and collectors that read the store."""

    def __init__(self, db: Callable[[], Database], traffic: Callable[[], Traffic] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.api = ApiMetrics(self.registry)
        self.scheduler = SchedulerMetrics(self.registry)
        self.registry.register(StoreCollector(db))
        self.registry.register(UsageCollector(db))
        self.registry.register(DatasetCollector(db))
        if traffic is not None:
            self.registry.register(ServingCollector(db, traffic))

    def install(self, app: FastAPI) -> None:
        """Observe every request of ``app`` (call before it starts)."""
        app.add_middleware(ApiMiddleware, api=self.api)
