"""The scheduler interface: a snapshot of the cluster and queue in, decisions out.

Everything here is an immutable value. A scheduler sees nothing but the
:class:`Snapshot` it is given (including ``now``), so a cycle is a pure
function and can be replayed, simulated and tested without a database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from tessera.api.jobs import PendingReason
from tessera.api.resources import Resources

# Float compute shares are summed across slices; a tolerance keeps e.g. ten
# 10% slices (or three 1/3 shares) from being refused as 100.0000001%.
COMPUTE_EPSILON = 1e-6

# Pending reason codes (PendingReason.code).
NO_NODES = "NoNodes"
"""No node has joined the cluster yet."""
NO_READY_NODES = "NoReadyNodes"
"""Nodes have joined, but none is Ready."""
UNSCHEDULABLE = "Unschedulable"
"""The job does not fit now; the message says which task and what is short."""
GANG_TOO_LARGE = "GangTooLarge"
"""The job's tasks together need more than the whole cluster could hold even if empty."""

NO_NODES_MESSAGE = "no node has joined yet"
NO_READY_NODES_MESSAGE = "no node is Ready"


@dataclass(frozen=True, slots=True)
class MigState:
    """A MIG instance of a GPU in MIG mode (discovered, never reconfigured) and whether it is taken."""

    uuid: str
    profile: str
    memory_mib: int
    used: bool = False


@dataclass(frozen=True, slots=True)
class GpuState:
    """One physical GPU and how much of it is already allocated."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    used_memory_mib: int = 0
    used_compute_pct: float = 0.0
    mig_mode: bool = False
    mig: tuple[MigState, ...] = ()  # its MIG instances, when in MIG mode
    numa_node: int | None = None  # topology, when the inventory reports it
    nvlink_peers: tuple[str, ...] = ()  # UUIDs of the GPUs it has NVLink to

    @property
    def free_memory_mib(self) -> int:
        """Unallocated memory; never negative, even if the snapshot is over-committed."""
        return max(0, self.memory_mib - self.used_memory_mib)

    @property
    def free_compute_pct(self) -> float:
        """Unallocated compute percent; never negative."""
        return max(0.0, 100.0 - self.used_compute_pct)

    @property
    def idle(self) -> bool:
        """Whether nothing at all is allocated on this GPU."""
        return self.used_memory_mib == 0 and self.used_compute_pct <= COMPUTE_EPSILON


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node: readiness, host capacity, GPUs and what is already allocated."""

    name: str
    ready: bool
    cpu: float
    memory_mib: int
    gpus: tuple[GpuState, ...]
    used_cpu: float = 0.0
    used_memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a pending job and what it asks for."""

    task_id: uuid.UUID
    group: str
    index: int
    resources: Resources

    @property
    def label(self) -> str:
        """The name users see in messages, e.g. ``worker-0``."""
        return f"{self.group}-{self.index}"


@dataclass(frozen=True, slots=True)
class Amounts:
    """Aggregate quantities for quotas: GPU-equivalents, CPU cores, memory MiB."""

    gpu: float = 0.0
    cpu: float = 0.0
    memory_mib: float = 0.0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(self.gpu + other.gpu, self.cpu + other.cpu, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(self.gpu - other.gpu, self.cpu - other.cpu, self.memory_mib - other.memory_mib)

    def fits_within(self, limit: Amounts) -> bool:
        """Every component <= the limit's (with the compute tolerance)."""
        return (
            self.gpu <= limit.gpu + COMPUTE_EPSILON
            and self.cpu <= limit.cpu + COMPUTE_EPSILON
            and self.memory_mib <= limit.memory_mib + COMPUTE_EPSILON
        )


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue of the tree: guaranteed quota, how much more it may borrow (None: no limit), weight."""

    name: str
    parent: str | None = None
    guaranteed: Amounts = Amounts()
    borrowing_limit: Amounts | None = None
    weight: float = 1.0
    placement: str | None = None  # placement policy of its jobs; None: the parent's, else the cluster's


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job waiting to be placed; its tasks form one all-or-nothing gang."""

    job_id: uuid.UUID
    name: str
    queue: str
    priority: int
    submitted_at: datetime
    tasks: tuple[TaskRequest, ...]
    preemptible: bool = False
    preempting: bool = False  # it evicted jobs last cycle and waits for the room they free
    min_available: int | None = None  # gang size; None means every task
    expected_runtime_s: float | None = None
    reserved: bool = False  # it held a reservation last cycle (see backfill.py)
    # Data locality (the datasets' node caches): per node, the fraction of the job's data cached there.
    locality: tuple[tuple[str, float], ...] = ()
    # Required data locality: only these nodes (those holding all of it) may run it; None: any.
    data_nodes: frozenset[str] | None = None
    # its node selector (label=value pairs); the nodes matching it are folded into data_nodes
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def gang_size(self) -> int:
        return self.min_available or len(self.tasks)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scheduling cycle may look at."""

    nodes: tuple[NodeState, ...]
    pending: tuple[PendingJob, ...]
    now: datetime
    running: tuple[RunningJob, ...] = ()
    queues: tuple[QueueState, ...] = ()
    placement: str = "tessera"  # the cluster's placement policy (queues may set their own)


@dataclass(frozen=True, slots=True)
class SlicePlacement:
    """One GPU (or share of one) given to a task.

    A task gets one placement per GPU it occupies; a CPU-only task gets exactly
    one placement with ``gpu_uuid``/``gpu_index`` None and no GPU memory or compute.
    A MIG instance is placed on its parent GPU with ``mig_uuid`` set, its memory and
    its compute share (slices of 7).
    """

    task_id: uuid.UUID
    node: str
    gpu_uuid: str | None
    gpu_index: int | None
    memory_mib: int
    compute_pct: float
    mig_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class Bind:
    """Place every task of one job: the complete gang, never part of it."""

    job_id: uuid.UUID
    placements: tuple[SlicePlacement, ...]
    # Set for a backfill: it took capacity held for a waiting gang and must end by then.
    backfill_until: datetime | None = None

    def task_nodes(self) -> dict[uuid.UUID, str]:
        """The node each task runs on (all placements of a task share one node)."""
        return {p.task_id: p.node for p in self.placements}


@dataclass(frozen=True, slots=True)
class ElasticRun:
    """What an elastic job may grow into and give back (step 6)."""

    min_workers: int
    max_workers: int
    # bound tasks beyond the gang, in the order they are given back (newest grant first)
    extras: tuple[TaskRequest, ...] = ()
    # unbound tasks it may still be granted, in order, up to max_workers in all
    growable: tuple[TaskRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A placed job (bound, starting or running): what evicting it would free and cost.

    Its usage is already included in the nodes' ``used_*`` figures.
    """

    job_id: uuid.UUID
    name: str
    queue: str
    priority: int
    preemptible: bool
    started_at: datetime
    placements: tuple[SlicePlacement, ...]
    cpu: float = 0.0  # host CPU of all its tasks
    memory_mib: int = 0  # host memory of all its tasks
    host_usage: tuple[tuple[str, float, int], ...] = ()  # (node, cpu, memory MiB) per task
    expected_runtime_s: float | None = None
    backfill_until: datetime | None = None  # admitted as a backfill that should end by then
    # a service replica whose queue does not let others preempt or reclaim it
    protected: bool = False
    elastic: ElasticRun | None = None
    version: int = 0  # the job's version this was derived from (grants and shrinks are conditional)
    locality: tuple[tuple[str, float], ...] = ()

    @property
    def expected_end(self) -> datetime | None:
        """When it should end by its declared runtime; None if it declared none."""
        if self.expected_runtime_s is None:
            return None
        return self.started_at + timedelta(seconds=self.expected_runtime_s)


@dataclass(frozen=True, slots=True)
class Eviction:
    """Stop a running job (whole gang) so that ``for_job`` can be placed."""

    job_id: uuid.UUID
    for_job: uuid.UUID
    reason: str  # "Preempted" (priority) or "Reclaimed" (quota)
    message: str


@dataclass(frozen=True, slots=True)
class Grant:
    """Give a running elastic job more slices (one task each), up to its max_workers."""

    job_id: uuid.UUID
    version: int
    placements: tuple[SlicePlacement, ...]

    def task_nodes(self) -> dict[uuid.UUID, str]:
        return {p.task_id: p.node for p in self.placements}


@dataclass(frozen=True, slots=True)
class Shrink:
    """Take back an elastic job's extra slices (never below its gang) so ``for_job`` fits."""

    job_id: uuid.UUID
    version: int
    task_ids: tuple[uuid.UUID, ...]
    for_job: uuid.UUID
    message: str


@dataclass(frozen=True, slots=True)
class Decisions:
    """What a cycle decided: jobs to bind, and why every other pending job waits."""

    binds: tuple[Bind, ...]
    pending: dict[uuid.UUID, PendingReason]
    evictions: tuple[Eviction, ...] = ()
    grants: tuple[Grant, ...] = ()
    shrinks: tuple[Shrink, ...] = ()


@runtime_checkable
class Scheduler(Protocol):
    """A scheduling policy: one pure cycle from snapshot to decisions."""

    name: str

    def cycle(self, snapshot: Snapshot) -> Decisions:
        """Decide binds and pending reasons for this snapshot; same snapshot, same decisions."""
        ...
