"""Queues: a tree with guaranteed quota, borrowing limit and weight."""

from __future__ import annotations

from pydantic import Field, field_validator

from tessera.api.common import Meta, Model, Name
from tessera.api.resources import ResourceAmounts

DEFAULT_QUEUE = "default"

PLACEMENTS = ("tessera", "fgd", "bestfit", "packing", "clustering", "dotprod", "spread", "random")
"""Placement policies by name (tessera/scheduler/policies); ``tessera`` is the default everywhere."""
PLACEMENT_FORM = "one of " + ", ".join(PLACEMENTS)


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
