"""What the enforcer works on and reports: slices, its settings, events and its snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.gpushare.device import GpuInfo
from tessera.gpushare.signals import Proc
from tessera.gpushare.tiers import GpuTiers, SliceTier


@dataclass(frozen=True)
class SliceSpec:
    """A slice this node runs, and the processes that stand for its task."""

    slice_id: str
    gpu_uuid: str  # the physical GPU
    memory_mib: int
    compute_pct: float
    shim: Proc  # the task's supervisor: every process of the slice descends from it
    task: Proc | None = None  # the task's main process, leader of its process group
    mig_instance: str | None = None
    memory_policy: str = "kill"
    compute_policy: str = "measure"
    may_throttle: bool = True  # False for a gang's members and a service's replicas
    # Where the kubelet starts the task (no shim is its parent): its pod's cgroup; a process in it
    # (or below it) belongs to the slice (cgroups.py).
    cgroup: str | None = None

    @property
    def device_uuid(self) -> str:
        """Where the device lists its processes: its MIG instance, else its GPU."""
        return self.mig_instance or self.gpu_uuid


@dataclass(frozen=True)
class EnforcerConfig:
    poll_seconds: float = 0.1
    window_seconds: float = 2.0
    memory_grace_seconds: float = 5.0
    unattributed: str = "report"  # or "kill"
    unattributed_grace_seconds: float = 1.0
    attribution_ttl_seconds: float = 1.0
    inventory_seconds: float = 30.0
    utilization_seconds: float = 1.0
    throttle_event_seconds: float = 60.0


@dataclass(frozen=True)
class EnforcementEvent:
    reason: str
    message: str
    slice_id: str | None = None
    warning: bool = True


@dataclass(frozen=True)
class Stray:
    """A process on a managed GPU that belongs to no slice."""

    pid: int
    used_mib: int | None
    reason: str
    hint: str | None


@dataclass(frozen=True)
class SliceStatus:
    spec: SliceSpec
    tier: SliceTier
    used_mib: int | None = None
    share_pct: float | None = None
    throttled_pct: float = 0.0
    processes: int = 0
    state: str = "ok"


@dataclass(frozen=True)
class GpuStatus:
    info: GpuInfo
    tiers: GpuTiers
    used_mib: int | None = None
    utilization_pct: float | None = None
    lost: bool = False
    strays: tuple[Stray, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    at: float  # seconds since the epoch
    device: str
    device_error: str | None = None
    gpus: tuple[GpuStatus, ...] = ()
    slices: tuple[SliceStatus, ...] = ()
