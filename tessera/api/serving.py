"""Inference services: a Service has numbered Revisions (its spec at each update), and each
revision runs Replicas, one slice each. Also the gateway's report and route table."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta

from pydantic import Field, field_validator, model_validator

from tessera.api.common import Duration, Labels, Meta, Model, Name
from tessera.api.jobs import PRIORITY_CLASSES, Priority, TaskGroupSpec
from tessera.api.resources import Resources

SERVICE_NAME_MAX = 40
"""Replicas run under generated names (``NAME-rN-xxxxx``), which must stay DNS labels."""
LATENCY_SAMPLES_MAX = 512
MAX_WINDOW = timedelta(minutes=10)  # the autoscaler keeps this much traffic history


class ServiceSpec(Model):
    """What a revision runs and how the service scales. A replica must listen on ``$PORT``."""

    name: Name
    project: Name = "default"
    queue: Name | None = Field(default=None, description="Defaults to the project's queue.")
    command: list[str] = Field(min_length=1, description="The model server's command line.")
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    image: str | None = Field(default=None, description="Container image (Kubernetes backend only).")
    port: int = Field(
        default=8000, ge=1, le=65535, description="Container port on Kubernetes; locally $PORT is assigned."
    )
    resources: Resources = Field(default_factory=Resources)
    readiness_path: str = Field(default="/", description="GET here answers 2xx once the model is loaded.")
    public: bool = Field(default=False, description="No token needed at the gateway.")
    priority: Priority = PRIORITY_CLASSES["normal"]
    version: str | None = Field(default=None, max_length=63, description="A label for the revision.")
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_concurrency: float = Field(
        default=10, gt=0, le=10000, description="In-flight requests per replica."
    )
    stable_window: Duration = Field(default=timedelta(seconds=60))
    panic_window: Duration = Field(default=timedelta(seconds=6))
    panic_threshold: float = Field(
        default=2.0, gt=1, le=100, description="Panic when the panic window wants this many times the ready."
    )
    scale_to_zero_grace: Duration = Field(
        default=timedelta(seconds=30),
        description="Idle this long (and longer than a replica's start) before the last replica goes.",
    )
    hold_timeout: Duration = Field(
        default=timedelta(seconds=120), description="How long the gateway holds a request for a replica."
    )
    startup_timeout: Duration = Field(
        default=timedelta(minutes=10),
        description="A replica not ready this long after it started fails (and is replaced, backing off).",
    )
    labels: Labels = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _short(cls, value: str) -> str:
        if len(value) > SERVICE_NAME_MAX:
            raise ValueError(f"a service name has at most {SERVICE_NAME_MAX} characters, got {len(value)}")
        return value

    @field_validator("readiness_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"readiness_path is an HTTP path starting with '/', got {value!r}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ServiceSpec:
        # what a replica runs must make a valid task (env names, a command)
        TaskGroupSpec(command=self.command, env=self.env, resources=self.resources)
        if self.stable_window > MAX_WINDOW:
            raise ValueError(f"stable_window is at most {MAX_WINDOW.total_seconds():g}s")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) cannot exceed max_replicas ({self.max_replicas})"
            )
        if self.panic_window >= self.stable_window:
            raise ValueError("panic_window must be shorter than stable_window")
        if self.panic_window < timedelta(seconds=1):
            raise ValueError("panic_window is at least 1s")
        return self


class ServiceUpdate(Model):
    """``serve update``: fields to change. Any change to what runs makes a new revision."""

    command: list[str] | None = Field(default=None, min_length=1)
    env: dict[str, str | None] | None = Field(
        default=None, description="Merged into the revision's env; a null value removes the variable."
    )
    image: str | None = None
    resources: Resources | None = None
    readiness_path: str | None = None
    version: str | None = None
    min_replicas: int | None = Field(default=None, ge=0, le=1000)
    max_replicas: int | None = Field(default=None, ge=1, le=1000)
    target_concurrency: float | None = Field(default=None, gt=0, le=10000)
    public: bool | None = None
    priority: Priority | None = None
    canary: int | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic for the new revision (default 100)."
    )


class TrafficTarget(Model):
    revision: int = Field(ge=1)
    percent: int = Field(ge=0, le=100)


class TrafficSplit(Model):
    """Percent of traffic per revision; the percents add up to 100."""

    targets: list[TrafficTarget] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _sum(self) -> TrafficSplit:
        total = sum(t.percent for t in self.targets)
        if total != 100:
            raise ValueError(f"traffic percents must add up to 100, got {total}")
        numbers = [t.revision for t in self.targets]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"a revision appears twice in the split: {numbers}")
        return self


class RevisionMetrics(Model):
    """What the gateways measured for a revision over the last minute."""

    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    in_flight: float = 0.0
    held: int = 0


class ReplicaState(enum.StrEnum):
    PENDING = "Pending"  # waiting for a slice
    STARTING = "Starting"  # its process runs; not ready yet
    READY = "Ready"
    TERMINATING = "Terminating"  # draining: no new requests, stopped once idle
    FAILED = "Failed"
    STOPPED = "Stopped"


LIVE_REPLICA_STATES = frozenset({ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.READY})


class Replica(Meta):
    service: Name
    project: str = ""
    revision_number: int = Field(description="The service revision it runs.")
    state: ReplicaState
    job_id: uuid.UUID | None = Field(default=None, description="The workload that runs it.")
    node: str | None = None
    endpoint: str | None = Field(default=None, description="host:port the gateway sends requests to.")
    message: str = ""
    started_at: datetime | None = None
    ready_at: datetime | None = None


class Revision(Meta):
    service: Name
    project: str = ""
    number: int
    spec: ServiceSpec
    traffic_percent: int = Field(ge=0, le=100)
    desired_replicas: int = 0
    ready_replicas: int = 0
    panic: bool = False
    cold_start_s: float | None = Field(
        default=None, description="Its last new replica's time from created (the scale-up) to ready."
    )
    metrics: RevisionMetrics = Field(default_factory=RevisionMetrics)


class ServiceStatus(Model):
    url: str | None = Field(default=None, description="The service at the gateway.")
    latest_revision: int = 1
    traffic: list[TrafficTarget] = Field(default_factory=list)
    ready_replicas: int = 0
    desired_replicas: int = 0
    message: str = ""


class Service(Meta):
    name: Name
    project: Name
    queue: Name
    owner: str
    spec: ServiceSpec
    status: ServiceStatus
    revisions: list[Revision] | None = None
    replicas: list[Replica] | None = None


class ServiceCreated(Service):
    """The create (or token rotate) response: the only time the service's token is shown."""

    token: str | None = None


# gateway <-> control plane ------------------------------------------------------------------


class RevisionSample(Model):
    """One revision's traffic at one gateway over the last report interval."""

    service_id: uuid.UUID
    revision: int
    concurrency: float = Field(ge=0, description="Time-averaged in-flight requests, held ones included.")
    held: int = Field(default=0, ge=0, description="Requests waiting for a ready replica now.")
    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    latencies_ms: list[float] = Field(default_factory=list, max_length=LATENCY_SAMPLES_MAX)


class ReplicaSample(Model):
    replica_id: uuid.UUID
    ready: bool = Field(description="Its readiness probe passed (and no request to it failed since).")
    in_flight: int = Field(ge=0)


class GatewayReport(Model):
    gateway: Name
    url: str = Field(description="Where clients reach this gateway.")
    interval_s: float = Field(gt=0, le=600)
    routes_revision: int = Field(ge=0, description="The route table's revision this gateway applies.")
    revisions: list[RevisionSample] = Field(default_factory=list)
    replicas: list[ReplicaSample] = Field(default_factory=list)


class RouteReplica(Model):
    id: uuid.UUID
    endpoint: str
    draining: bool = False


class RouteRevision(Model):
    number: int
    percent: int
    replicas: list[RouteReplica] = Field(default_factory=list)


class Route(Model):
    service_id: uuid.UUID
    name: Name
    project: Name
    public: bool
    token_sha256: str | None = Field(default=None, description="sha256 hex of the service's token.")
    readiness_path: str
    hold_timeout_s: float
    revisions: list[RouteRevision]


class RouteTable(Model):
    revision: int = Field(description="Changes whenever any route does.")
    services: list[Route] = Field(default_factory=list)
