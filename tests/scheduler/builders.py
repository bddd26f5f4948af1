"""Terse, deterministic builders for scheduler snapshots.

``make_job("a").gpus(0.5).workers(2).priority(10).build()`` -> PendingJob
``make_node("n1").gpus(2, "A100-80GB", 81920).cpu(32).memory("256Gi").build()`` -> NodeState

Ids are uuid5 of names and times are fixed, so equal builders give equal values.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.api.quantities import parse_memory_mib
from tessera.api.resources import Resources
from tessera.scheduler.model import (
    Bind,
    GpuState,
    NodeState,
    PendingJob,
    Snapshot,
    TaskRequest,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
_NS = uuid.UUID("6f1c1e0a-0000-4000-8000-000000000000")


def job_id(name: str) -> uuid.UUID:
    """The id make_job(name) gives its job."""
    return uuid.uuid5(_NS, f"job/{name}")


def task_id(job: str, group: str, index: int) -> uuid.UUID:
    """The id make_job(job) gives task ``group-index``."""
    return uuid.uuid5(_NS, f"task/{job}/{group}-{index}")


class JobBuilder:
    """Builds a PendingJob whose main group (``worker``) is shaped by chained calls."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue = "default"
        self._priority = 100
        self._submitted = T0
        self._group = "worker"
        self._replicas = 1
        self._fields: dict[str, Any] = {}
        self._extra: list[tuple[str, int, dict[str, Any]]] = []

    def gpus(self, gpus: float) -> JobBuilder:
        self._fields["gpus"] = gpus
        return self

    def slice(self, memory: str | None = None, compute: int | None = None) -> JobBuilder:
        if memory is not None:
            self._fields["gpu_memory"] = memory
        if compute is not None:
            self._fields["gpu_compute"] = compute
        return self

    def mig(self, profile: str) -> JobBuilder:
        self._fields["mig_profile"] = profile
        return self

    def models(self, *models: str) -> JobBuilder:
        self._fields["gpu_models"] = list(models)
        return self

    def cpu(self, cpu: float) -> JobBuilder:
        self._fields["cpu"] = cpu
        return self

    def memory(self, memory: str) -> JobBuilder:
        self._fields["memory"] = memory
        return self

    def workers(self, replicas: int) -> JobBuilder:
        self._replicas = replicas
        return self

    def group(self, name: str) -> JobBuilder:
        """Rename the main group (default ``worker``)."""
        self._group = name
        return self

    def also(self, group: str, replicas: int = 1, **resources: Any) -> JobBuilder:
        """Add another group with its own Resources fields, e.g. ``also("ps", 1, cpu=2)``."""
        self._extra.append((group, replicas, resources))
        return self

    def priority(self, priority: int) -> JobBuilder:
        self._priority = priority
        return self

    def submitted(self, minutes: float) -> JobBuilder:
        """Submit time as minutes after T0."""
        self._submitted = T0 + timedelta(minutes=minutes)
        return self

    def queue(self, queue: str) -> JobBuilder:
        self._queue = queue
        return self

    def build(self) -> PendingJob:
        groups = [(self._group, self._replicas, self._fields), *self._extra]
        tasks = tuple(
            TaskRequest(task_id(self._name, group, i), group, i, Resources.model_validate(fields))
            for group, replicas, fields in groups
            for i in range(replicas)
        )
        return PendingJob(
            job_id=job_id(self._name),
            name=self._name,
            queue=self._queue,
            priority=self._priority,
            submitted_at=self._submitted,
            tasks=tasks,
        )


class NodeBuilder:
    """Builds a NodeState; ``gpus()`` may be called again to add GPUs of another model."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._ready = True
        self._cpu = 64.0
        self._memory = parse_memory_mib("512Gi")
        self._used_cpu = 0.0
        self._used_memory = 0
        self._gpus: list[GpuState] = []

    def gpus(self, count: int, model: str = "A100-80GB", memory_mib: int = 81920) -> NodeBuilder:
        start = len(self._gpus)
        self._gpus += [
            GpuState(uuid=f"GPU-{self._name}-{i}", index=i, model=model, memory_mib=memory_mib)
            for i in range(start, start + count)
        ]
        return self

    @property
    def gpu_count(self) -> int:
        """GPUs added so far."""
        return len(self._gpus)

    def gpu_used(self, index: int, memory: str | int = 0, compute: float = 0.0) -> NodeBuilder:
        """Mark part of GPU ``index`` as already allocated (memory as a quantity or MiB)."""
        gpu = self._gpus[index]
        self._gpus[index] = dataclasses.replace(
            gpu, used_memory_mib=parse_memory_mib(memory), used_compute_pct=compute
        )
        return self

    def mig_mode(self, index: int) -> NodeBuilder:
        self._gpus[index] = dataclasses.replace(self._gpus[index], mig_mode=True)
        return self

    def cpu(self, cpu: float, used: float = 0.0) -> NodeBuilder:
        self._cpu, self._used_cpu = cpu, used
        return self

    def memory(self, memory: str, used: str | int = 0) -> NodeBuilder:
        self._memory, self._used_memory = parse_memory_mib(memory), parse_memory_mib(used)
        return self

    def not_ready(self) -> NodeBuilder:
        self._ready = False
        return self

    def build(self) -> NodeState:
        return NodeState(
            name=self._name,
            ready=self._ready,
            cpu=self._cpu,
            memory_mib=self._memory,
            gpus=tuple(self._gpus),
            used_cpu=self._used_cpu,
            used_memory_mib=self._used_memory,
        )


def make_job(name: str) -> JobBuilder:
    """Start a job builder; defaults: one CPU-only ``worker`` task, priority 100, submitted at T0."""
    return JobBuilder(name)


def make_node(name: str) -> NodeBuilder:
    """Start a node builder; defaults: Ready, 64 CPU, 512Gi memory, no GPUs."""
    return NodeBuilder(name)


def snapshot(nodes: Iterable[NodeState], jobs: Iterable[PendingJob]) -> Snapshot:
    """A snapshot at a fixed time."""
    return Snapshot(nodes=tuple(nodes), pending=tuple(jobs), now=T0 + timedelta(hours=1))


def apply_binds(
    nodes: Iterable[NodeState], jobs: Iterable[PendingJob], binds: Iterable[Bind]
) -> list[NodeState]:
    """Nodes with every bind's usage added: GPU memory/compute and host CPU/memory per task."""
    resources = {t.task_id: t.resources for j in jobs for t in j.tasks}
    by_name = {n.name: n for n in nodes}
    gpu_use: dict[tuple[str, str], tuple[int, float]] = {}
    host_use: dict[str, tuple[float, int]] = {}
    for bind in binds:
        for tid, where in bind.task_nodes().items():
            cpu, mem = host_use.get(where, (0.0, 0))
            host_use[where] = (cpu + resources[tid].cpu, mem + resources[tid].memory)
        for p in bind.placements:
            if p.gpu_uuid is not None:
                mem_used, pct_used = gpu_use.get((p.node, p.gpu_uuid), (0, 0.0))
                gpu_use[(p.node, p.gpu_uuid)] = (mem_used + p.memory_mib, pct_used + p.compute_pct)
    out = []
    for name, node in by_name.items():
        gpus = tuple(
            dataclasses.replace(
                g,
                used_memory_mib=g.used_memory_mib + gpu_use.get((name, g.uuid), (0, 0.0))[0],
                used_compute_pct=g.used_compute_pct + gpu_use.get((name, g.uuid), (0, 0.0))[1],
            )
            for g in node.gpus
        )
        cpu, mem = host_use.get(name, (0.0, 0))
        out.append(
            dataclasses.replace(
                node, gpus=gpus, used_cpu=node.used_cpu + cpu, used_memory_mib=node.used_memory_mib + mem
            )
        )
    return out
