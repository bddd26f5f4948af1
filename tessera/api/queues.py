"""Queues: a tree with guaranteed quota, borrowing limit and weight."""

from __future__ import annotations

from pydantic import Field

from tessera.api.common import Meta, Model, Name
from tessera.api.resources import ResourceAmounts

DEFAULT_QUEUE = "default"


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
    description: str = Field(default="", max_length=1000)


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
    description: str | None = Field(default=None, max_length=1000)
