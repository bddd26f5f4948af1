"""Nodes, GPUs and MIG instances as reported by node agents."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field

from tessera.api.common import Labels, MemoryMiB, Meta, Model, Name
from tessera.api.resources import Cpu


class NodeState(enum.StrEnum):
    READY = "Ready"
    NOT_READY = "NotReady"
    CORDONED = "Cordoned"


class MigInstance(Model):
    uuid: str
    profile: str = Field(description="e.g. 1g.10gb")
    memory_mib: int
    gpu_instance_id: int
    compute_instance_id: int


class Gpu(Model):
    uuid: str
    index: int = Field(ge=0)
    model: str
    memory_mib: int = Field(gt=0)
    sm_count: int | None = None
    numa_node: int | None = None
    nvlink_peers: list[str] = Field(default_factory=list, description="UUIDs of NVLink peers.")
    mig_mode: bool = False
    mig_instances: list[MigInstance] = Field(default_factory=list)
    simulated: bool = False


class NodeCondition(Model):
    """Something wrong with a node that it still runs with, as its agent reports it."""

    type: str = Field(max_length=63, description="e.g. LogDiskFull: task output is being dropped.")
    message: str = Field(default="", max_length=1000)
    since: datetime | None = None


class NodeInventory(Model):
    """What an agent reports about its machine."""

    gpus: list[Gpu] = Field(default_factory=list)
    cpu: Cpu = 1
    memory: MemoryMiB = 1024
    driver_version: str | None = None
    cuda_version: str | None = None
    agent_version: str | None = None
    simulated: bool = False
    conditions: list[NodeCondition] = Field(
        default_factory=list, max_length=16, description="What is wrong with the node now; empty if nothing."
    )


class Node(Meta):
    name: Name
    labels: Labels = Field(default_factory=dict)
    state: NodeState
    inventory: NodeInventory
    last_heartbeat_at: datetime | None = None
    agent_url: str | None = None


class RegisterNodeRequest(Model):
    name: Name
    labels: Labels = Field(default_factory=dict)
    inventory: NodeInventory
    agent_url: str | None = Field(
        default=None, max_length=255, description="Where the agent serves task logs (http://host:port)."
    )
    agent_secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=128,
        description="Bearer secret the control plane presents to the agent; never returned.",
    )
