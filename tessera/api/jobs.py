"""Jobs, task groups, tasks, attempts and allocations."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from tessera.api.common import INT32_MAX, Duration, Labels, Meta, Model, Name
from tessera.api.queues import SlicePolicy
from tessera.api.resources import Resources

MAX_REPLICAS = 10_000
"""The most tasks one group may have."""
PRIORITY_CLASSES: dict[str, int] = {"low": 0, "normal": 100, "high": 1000}
PRIORITY_FORM = "low, normal, high, or an integer in -1000000..1000000"
SERVICE_LABEL = "tessera.io/service"
"""Set on the jobs that run a service's replicas: node agents never duty-cycle those."""
ENV_NAME_FORM = "an environment variable name like MY_VAR (letters, digits, '_')"


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    RESIZING = "RESIZING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class TerminalReason(enum.StrEnum):
    COMPLETED = "Completed"
    ERROR = "Error"
    START_ERROR = "StartError"
    SLICE_OOM = "SliceOOM"
    HOST_OOM = "HostOOM"
    NODE_LOST = "NodeLost"
    EVICTED = "Evicted"
    CANCELLED = "Cancelled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    QUEUE_DELETED = "QueueDeleted"


class PendingReason(Model):
    """Why a job is not running yet; refreshed every scheduling cycle."""

    code: str = Field(description="Machine-readable, e.g. NoNodes, QuotaExceeded.")
    message: str


def _priority(value: Any) -> Any:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRIORITY_CLASSES:
            return PRIORITY_CLASSES[key]
        try:
            return int(key)
        except ValueError:
            raise ValueError(f"{value!r} is not {PRIORITY_FORM}") from None
    return value


Priority = Annotated[int, BeforeValidator(_priority), Field(ge=-1_000_000, le=1_000_000)]


class TaskGroupSpec(Model):
    """A group of identical tasks, e.g. ``worker`` x 4 (rank 0 acts as torch master)."""

    name: Name = "worker"
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    min_available: int | None = Field(
        default=None, ge=1, description="Gang size: tasks placed together; defaults to replicas."
    )
    command: list[str] = Field(min_length=1, description="argv of every task in the group.")
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    image: str | None = Field(default=None, description="Container image (container backends).")
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _check(self) -> TaskGroupSpec:
        if self.min_available is not None and self.min_available > self.replicas:
            raise ValueError(f"min_available ({self.min_available}) cannot exceed replicas ({self.replicas})")
        for key in self.env:
            if (
                not key
                or not (key[0].isalpha() or key[0] == "_")
                or not all(c.isalnum() or c == "_" for c in key)
            ):
                raise ValueError(f"env key {key!r} is not {ENV_NAME_FORM}")
        if not self.command[0]:
            raise ValueError("command[0] must name a program")
        return self

    @property
    def gang_size(self) -> int:
        return self.min_available or self.replicas


DATA_FORM = "NAME:/path (a dataset of the project, and where the task sees it)"


class DataMount(Model):
    """A dataset a job's tasks read: cached on their node before they start (``mount``)."""

    dataset: Name
    path: str = Field(
        default="/data",
        max_length=500,
        description="Mount point in a container; informational for processes.",
    )
    mode: str = Field(default="mount", pattern="^(mount|stream)$", description="mount: filled before start.")
    locality: str = Field(
        default="preferred",
        pattern="^(preferred|required)$",
        description="preferred: nodes with more of it cached first; required: only nodes holding all of it.",
    )
    dataset_id: uuid.UUID | None = Field(default=None, description="Set by the control plane at submit.")

    @property
    def env_name(self) -> str:
        """``TESSERA_DATA_<NAME>``: upper case, '-' as '_'."""
        return "TESSERA_DATA_" + self.dataset.upper().replace("-", "_")


class RetryPolicy(Model):
    max_retries: int = Field(default=0, ge=0, le=100)


ENTRY_FORM = "package.module:function, or a script path (path/to/train.py, or path/to/train.py:function)"
ELASTIC_GROUP = "worker"


def _entry(value: str) -> str:
    """Check an entry point's form: ``pkg.mod:fn``, ``script.py`` or ``script.py:fn``."""
    target, _, function = value.strip().rpartition(":") if ":" in value else (value.strip(), "", "")
    if not target or (function and not function.isidentifier()):
        raise ValueError(f"{value!r} is not {ENTRY_FORM}")
    if not target.endswith(".py") and not (function and all(p.isidentifier() for p in target.split("."))):
        raise ValueError(f"{value!r} is not {ENTRY_FORM}")
    return value.strip()


class ElasticSpec(Model):
    """An elastic Ray Train job: a per-job Ray cluster of ``min_workers``..``max_workers`` slices.

    The gang is ``min_workers``; more slices are granted while free, up to ``max_workers``, and
    are the first thing reclaimed. ``max_workers`` may exceed the cluster (it grows with it).
    """

    min_workers: int = Field(ge=1, le=1000, description="The gang: workers placed together to start.")
    max_workers: int = Field(ge=1, le=1000, description="Most workers granted when slices are free.")
    entry: Annotated[str, BeforeValidator(lambda v: _entry(v) if isinstance(v, str) else v)] = Field(
        min_length=1, max_length=500, description=f"The training function: {ENTRY_FORM}."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="Passed to train(config).")
    storage: str | None = Field(
        default=None,
        max_length=1000,
        description="Checkpoint storage: a local dir or fsspec URL; defaults to one per job.",
    )
    max_failures: int = Field(
        default=3, ge=-1, le=1000, description="Worker failures Ray recovers from (-1: no limit)."
    )
    start_timeout: Duration = Field(
        default=timedelta(seconds=15),
        description="How long Ray Train waits for a worker group to start before resizing to what is there.",
    )
    resize_interval: Duration = Field(
        default=timedelta(seconds=2),
        description="How often a healthy worker group looks for granted slices to grow into.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ElasticSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) cannot exceed max_workers ({self.max_workers})"
            )
        if self.start_timeout.total_seconds() < 1 or self.resize_interval.total_seconds() < 1:
            raise ValueError("start_timeout and resize_interval must be at least 1s")
        return self


class JobSpec(Model):
    name: Name
    project: Name = "default"
    queue: Name | None = Field(default=None, description="Defaults to the project's queue.")
    kind: str = Field(default="train", pattern="^(train|pytorchjob|elastic|serve)$")
    groups: list[TaskGroupSpec] = Field(min_length=1, max_length=16)
    priority: Priority = PRIORITY_CLASSES["normal"]
    preemptible: bool = False
    deadline: Duration | None = Field(
        default=None, description="Fail with DeadlineExceeded if not finished this long after submit."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    expected_runtime: Duration | None = Field(
        default=None, description="How long the job expects to run (lets it backfill); e.g. 2h."
    )
    elastic: ElasticSpec | None = Field(default=None, description="Set for kind elastic, only then.")
    data: list[DataMount] = Field(default_factory=list, max_length=16, description="Datasets it reads.")
    node_selector: Labels = Field(
        default_factory=dict, description="Run only on nodes with all of these labels (Arena's --selector)."
    )
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_groups(self) -> JobSpec:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups must have distinct names, got {names}")
        names = [d.dataset for d in self.data]
        if len(set(names)) != len(names):
            raise ValueError(f"data names a dataset twice: {names}")
        if (self.kind == "elastic") != (self.elastic is not None):
            raise ValueError(
                "kind elastic needs the elastic section (min_workers, max_workers, entry), "
                "and only kind elastic may have one"
            )
        if self.elastic is not None:
            group = self.groups[0]
            if len(self.groups) != 1 or group.name != ELASTIC_GROUP:
                raise ValueError(f"an elastic job has one group, named {ELASTIC_GROUP!r}")
            if group.replicas != self.elastic.max_workers or group.gang_size != self.elastic.min_workers:
                raise ValueError(
                    f"an elastic job's group has replicas = max_workers ({self.elastic.max_workers}) and "
                    f"min_available = min_workers ({self.elastic.min_workers}), got {group.replicas} "
                    f"and {group.gang_size}"
                )
        return self

    @property
    def task_count(self) -> int:
        return sum(g.replicas for g in self.groups)


class SubmitJobRequest(JobSpec):
    """A job submission; ``name`` may be left out and is then generated."""

    name: Name | None = None  # type: ignore[assignment]


class MasterEndpoint(Model):
    """Rank 0's node, address and port for one attempt of a multi-task job."""

    node: str
    address: str
    port: int = Field(ge=1, le=65535)
    token: str | None = Field(
        default=None,
        description="Elastic jobs: this attempt's Ray cluster token (visible to the job's project only).",
    )


class JobStatus(Model):
    state: JobState
    reason: TerminalReason | None = None
    message: str = ""
    pending_reason: PendingReason | None = None
    attempt: int = 0
    exit_code: int | None = None
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Placed as a backfill into capacity held for a waiting gang: it should end by then, or that
    # gang may preempt it (docs/scheduler.md, "Backfill").
    backfill_until: datetime | None = None
    master: MasterEndpoint | None = Field(
        default=None, description="Where rank 0 listens in this attempt (MASTER_ADDR, MASTER_PORT)."
    )
    workers: int | None = Field(
        default=None, description="Elastic jobs: workers in Ray Train's running worker group."
    )
    failures: int = Field(
        default=0, ge=0, description="Elastic jobs: worker failures Ray Train recovered from (not reclaims)."
    )


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Task(Model):
    id: uuid.UUID
    group: str
    index: int
    state: TaskState
    node: str | None = None
    attempt: int = 0
    exit_code: int | None = None
    reason: TerminalReason | None = Field(
        default=None, description="Why its node ended it (SliceOOM), when the node ended it."
    )
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


NODE_REASONS = frozenset({TerminalReason.SLICE_OOM, TerminalReason.HOST_OOM})
"""Reasons a node agent may give for ending a task."""
OBSERVED_REASONS = NODE_REASONS | {TerminalReason.EVICTED, TerminalReason.NODE_LOST}
"""Reasons the control plane's Kubernetes backend reads off a pod (the kubelet evicted it, the pod
is gone with its node); never accepted from an agent's report."""


class TaskReport(Model):
    """What a node agent reports about one task of one attempt (idempotent)."""

    task_id: uuid.UUID
    attempt: int = Field(ge=0, le=INT32_MAX)
    state: TaskState
    exit_code: int | None = Field(default=None, ge=-INT32_MAX - 1, le=INT32_MAX)
    start_error: str | None = Field(default=None, max_length=1000)
    reason: TerminalReason | None = Field(
        default=None, description="Set when the node ended the task itself: SliceOOM or HostOOM."
    )
    message: str | None = Field(default=None, max_length=1000, description="The node's explanation.")
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @model_validator(mode="after")
    def _node_reason(self) -> TaskReport:
        if self.reason is not None and self.reason not in NODE_REASONS:
            accepted = ", ".join(sorted(NODE_REASONS))
            raise ValueError(f"reason {self.reason} cannot come from a node; accepted: {accepted}")
        return self


class TaskReports(Model):
    reports: list[TaskReport] = Field(max_length=5000)


class Allocation(Model):
    """A slice bound to one task: where, how much, and by which tier enforced."""

    id: uuid.UUID
    job_id: uuid.UUID
    task_id: uuid.UUID
    node: str
    gpu_uuid: str | None = None
    mig_instance: str | None = None
    memory_mib: int = 0
    compute_pct: float = 0
    tier: str | None = Field(
        default=None, description="The strongest enforcement its node applies (mig, mps, hami, watchdog)."
    )
    enforcement: SlicePolicy | None = Field(
        default=None, description="Its queue's memory and compute policy when it was bound."
    )
    attempt: int = 0


class Attempt(Model):
    number: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    nodes: list[str] = Field(default_factory=list)


class Job(Meta):
    name: Name
    project: Name
    queue: Name
    owner: str
    spec: JobSpec
    status: JobStatus
    tasks: list[Task] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    allocations: list[Allocation] = Field(default_factory=list)
    draining: list[Allocation] = Field(
        default_factory=list,
        description="Slices of ended attempts whose processes have not been seen to exit yet; "
        "they still count against their GPUs.",
    )


class NodeFit(Model):
    """One node's filter results for a pending job."""

    node: str
    ready: bool
    tasks_that_fit: int
    reasons: list[str]


class Explanation(Model):
    """Why a job is pending, node by node (`tessera explain`)."""

    job: str
    state: JobState
    tasks: int
    gang_size: int
    pending_reason: PendingReason | None = None
    nodes: list[NodeFit] = Field(default_factory=list)


class CancelJobRequest(Model):
    message: str = Field(default="", max_length=1000)
