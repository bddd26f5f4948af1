"""Queues: a tree with guaranteed quota, borrowing limit and weight."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tessera.api.common import Meta, Model, Name
from tessera.api.resources import ResourceAmounts

DEFAULT_QUEUE = "default"

PLACEMENTS = ("tessera", "fgd", "bestfit", "packing", "clustering", "dotprod", "spread", "random", "firstfit")
"""Placement policies by name (tessera/scheduler/policies); ``tessera`` is the default everywhere.
``firstfit`` scores nothing: the first Ready node by name that fits."""
PLACEMENT_FORM = "one of " + ", ".join(PLACEMENTS)

MEMORY_POLICIES = ("kill", "report")
"""What the node does with a slice over its GPU memory: stop its task (SliceOOM), or only report it."""
COMPUTE_POLICIES = ("measure", "throttle", "strict")
"""measure: report the share only; throttle: duty-cycle a slice over its share while another slice on
the GPU is busy; strict: hold it to its share even when it is alone on the GPU."""
MemoryPolicy = Literal["kill", "report"]
ComputePolicy = Literal["measure", "throttle", "strict"]


class Enforcement(Model):
    """How node agents enforce the slices of a queue's jobs; an unset field follows the parent queue."""

    memory: str | None = Field(
        default=None, description=f"Over the memory limit: {' or '.join(MEMORY_POLICIES)} (default kill)."
    )
    compute: str | None = Field(
        default=None,
        description=f"Over the compute share: {', '.join(COMPUTE_POLICIES)} (default measure).",
    )

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and value not in MEMORY_POLICIES:
            raise ValueError(f"unknown memory policy {value!r}; valid: {', '.join(MEMORY_POLICIES)}")
        return value

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str | None) -> str | None:
        if value is not None and value not in COMPUTE_POLICIES:
            raise ValueError(f"unknown compute policy {value!r}; valid: {', '.join(COMPUTE_POLICIES)}")
        return value


class SlicePolicy(Model):
    """The enforcement a slice runs under: its queue's, resolved up the tree when it was bound."""

    memory: MemoryPolicy = "kill"
    compute: ComputePolicy = "measure"


def resolve_enforcement(chain: list[Enforcement]) -> SlicePolicy:
    """The policy of the first queue of `chain` (queue, parent, ...): each unset field from further up."""
    memory = next((e.memory for e in chain if e.memory is not None), "kill")
    compute = next((e.compute for e in chain if e.compute is not None), "measure")
    return SlicePolicy.model_validate({"memory": memory, "compute": compute})


class QueueSpec(Model):
    parent: Name | None = Field(default=None, description="Parent queue; none for a root.")
    guaranteed: ResourceAmounts = Field(
        default_factory=ResourceAmounts, description="Quota this queue is always owed."
    )
    borrowing_limit: ResourceAmounts | None = Field(
        default=None,
        description="How much beyond guaranteed it may borrow from idle quota; none = unlimited.",
    )
    weight: float = Field(default=1.0, gt=0, le=1000, description="Fair-share weight.")
    placement: str | None = Field(
        default=None,
        description=f"Placement policy of its jobs ({PLACEMENT_FORM}); unset: the parent's or the cluster's.",
    )
    enforcement: Enforcement = Field(
        default_factory=Enforcement, description="Memory and compute enforcement of its jobs' slices."
    )
    services_preemptible: bool = Field(
        default=False,
        description="Whether its service replicas may be preempted (by priority) or reclaimed; by default "
        "serving is never evicted for training.",
    )
    description: str = Field(default="", max_length=1000)

    @field_validator("placement")
    @classmethod
    def _placement(cls, value: str | None) -> str | None:
        return check_placement(value)


class Queue(Meta):
    name: Name
    spec: QueueSpec


class CreateQueueRequest(QueueSpec):
    name: Name


class UpdateQueueRequest(Model):
    parent: Name | None = None
    guaranteed: ResourceAmounts | None = None
    borrowing_limit: ResourceAmounts | None = None
    weight: float | None = Field(default=None, gt=0, le=1000)
    placement: str | None = None
    enforcement: Enforcement | None = Field(
        default=None, description="Only the fields given change (memory, compute)."
    )
    description: str | None = Field(default=None, max_length=1000)

    @field_validator("placement")
    @classmethod
    def _placement(cls, value: str | None) -> str | None:
        return check_placement(value)


def check_placement(value: str | None) -> str | None:
    """A known placement policy name, or None."""
    if value is not None and value not in PLACEMENTS:
        raise ValueError(f"unknown placement policy {value!r}; valid: {PLACEMENT_FORM}")
    return value


class QueueUsage(Model):
    """What a queue holds now, against its quota and its fair share (as the scheduler counts it)."""

    queue: Name
    parent: Name | None = None
    used: ResourceAmounts = Field(description="Held by its running jobs and its sub-queues'.")
    guaranteed: ResourceAmounts
    borrowed: ResourceAmounts = Field(description="Used beyond guaranteed (on each resource).")
    borrowing_limit: ResourceAmounts | None = None
    weight: float
    dominant_share: float = Field(description="Max over resources of used / cluster total.")
    fair_share: float = Field(description="Its weight's part of the cluster among active sibling queues.")
    running: int = 0
    pending: int = 0
