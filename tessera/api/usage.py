"""What node agents measure on their GPUs: real use beside allocation, per GPU and per slice."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from tessera.api.common import Model
from tessera.api.events import EventType
from tessera.api.queues import SlicePolicy

TIERS = ("mig", "driver", "mps", "hami", "watchdog", "cooperative")
"""Enforcement tiers, strongest first (DESIGN.md, "GPU sharing"); the watchdog is always there."""

NODE_EVENT_REASONS = (
    "TrainingRunning",
    "TrainingFailed",
    "SliceMemoryExceeded",
    "Throttled",
    "UnattributedProcess",
    "UnattributedProcessKilled",
    "GpuLost",
    "GpuRecovered",
    "DeviceUnavailable",
    "DeviceRecovered",
)
"""Events a node agent may write; a job's when it names one, else the node's."""


class ProcessUsage(Model):
    """A process on a GPU that no slice accounts for."""

    pid: int
    used_memory_mib: int | None = None
    reason: str = Field(description="Why it belongs to no slice, e.g. 'no shim ancestor'.")
    hint: str | None = Field(default=None, description="The slice its environment claims (never trusted).")


class SliceUsage(Model):
    """One slice: what it was given and what it uses."""

    slice_id: uuid.UUID = Field(description="The allocation's id.")
    job_id: uuid.UUID
    job: str
    project: str
    task: str = Field(description="group-index")
    gpu_uuid: str
    mig_instance: str | None = None
    memory_mib: int = Field(description="Allocated memory.")
    compute_pct: float = Field(description="Allocated compute share.")
    used_memory_mib: int | None = Field(default=None, description="None: the device did not say.")
    share_pct: float | None = Field(default=None, description="Measured compute share over the window.")
    throttled_pct: float = Field(default=0, description="Percent of the window its processes were stopped.")
    processes: int = 0
    tier: str = Field(max_length=32, description="The strongest tier enforcing it.")
    memory_tier: str = Field(max_length=32)
    compute_tier: str = Field(
        max_length=32, description="mig, mps, hami, throttle (duty-cycled) or measure (reported)."
    )
    cooperative: bool = Field(default=False, description="The torch hook caps its allocator.")
    policy: SlicePolicy = Field(default_factory=SlicePolicy)
    state: str = Field(default="ok", description="ok, over-memory, stopping or throttled.")


class GpuUsage(Model):
    uuid: str
    index: int
    model: str
    memory_mib: int
    allocated_memory_mib: int = 0
    allocated_compute_pct: float = 0
    used_memory_mib: int | None = None
    utilization_pct: float | None = None
    tier: str = Field(description="The strongest tier this GPU offers.")
    tiers: list[str] = Field(default_factory=list, description="Every tier this GPU offers.")
    lost: bool = False
    unattributed: list[ProcessUsage] = Field(default_factory=list)


class NodeUsage(Model):
    """One measurement of a node (the agent sends it with each heartbeat)."""

    node: str
    at: datetime
    device: str = Field(description="nvml, simulated or none.")
    device_error: str | None = None
    poll_seconds: float
    window_seconds: float
    gpus: list[GpuUsage] = Field(default_factory=list, max_length=1024)
    slices: list[SliceUsage] = Field(default_factory=list, max_length=16384)


class Heartbeat(Model):
    usage: NodeUsage | None = None


class JobUsage(Model):
    """A job's slices, allocation beside use (``tessera top job``)."""

    job: str
    project: str
    state: str
    slices: list[SliceUsage] = Field(default_factory=list)


class NodeEvent(Model):
    """An event a node agent writes about one of its jobs (or, without a job, about itself)."""

    reason: str = Field(description=", ".join(NODE_EVENT_REASONS))
    message: str = Field(default="", max_length=2000)
    type: EventType = EventType.WARNING
    job_id: uuid.UUID | None = None
    at: datetime | None = None
    workers: int | None = Field(default=None, ge=0, le=100_000, description="TrainingRunning: group size.")
    source: Literal["worker", "preemption", "controller"] | None = Field(
        default=None,
        description="TrainingFailed: what Ray Train charged it to; only worker failures spend the budget.",
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if value not in NODE_EVENT_REASONS:
            raise ValueError(f"unknown node event {value!r}; valid: {', '.join(NODE_EVENT_REASONS)}")
        return value


class NodeEvents(Model):
    events: list[NodeEvent] = Field(max_length=1000)
