"""Inference services, their revisions and replicas (specs now; served later)."""

from __future__ import annotations

import enum
import uuid

from pydantic import Field, model_validator

from tessera.api.common import Duration, Labels, Meta, Model, Name
from tessera.api.jobs import Priority
from tessera.api.resources import Resources


class ServiceSpec(Model):
    name: Name
    project: Name = "default"
    queue: Name | None = None
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    port: int = Field(default=8000, ge=1, le=65535)
    resources: Resources = Field(default_factory=Resources)
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_concurrency: float = Field(default=10, gt=0)
    readiness_path: str = "/"
    public: bool = False
    priority: Priority = 100
    stable_window: Duration = Field(default="60s")  # type: ignore[assignment]
    panic_window: Duration = Field(default="6s")  # type: ignore[assignment]
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> ServiceSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas cannot exceed max_replicas")
        return self


class Revision(Meta):
    service: Name
    number: int
    spec: ServiceSpec
    traffic_percent: int = Field(ge=0, le=100)


class ReplicaState(enum.StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    TERMINATING = "Terminating"
    FAILED = "Failed"


class Replica(Meta):
    service: Name
    revision: int
    state: ReplicaState
    node: str | None = None
    endpoint: str | None = None
    allocation_id: uuid.UUID | None = None


class Service(Meta):
    name: Name
    project: Name
    spec: ServiceSpec
