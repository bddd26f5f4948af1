"""Terse, deterministic builders for scheduler snapshots.

``make_job("a").gpus(0.5).workers(2).priority(10).build()`` -> PendingJob
``make_node("n1").gpus(2, "A100-80GB", 81920).cpu(32).memory("256Gi").build()`` -> NodeState
``make_queue("q").guaranteed(gpu=4).borrow(gpu=2).weight(2).parent("root").build()`` -> QueueState
``start(nodes, [make_job("r").gpus(1).running(on="n1", started_minutes_ago=30)])`` -> nodes, RunningJobs

Ids are uuid5 of names and times are fixed, so equal builders give equal values.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.api.quantities import parse_memory_mib
from tessera.api.resources import Resources
from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.firstfit import FirstFit
from tessera.scheduler.model import (
    Amounts,
    Bind,
    Decisions,
    GpuState,
    MigState,
    NodeState,
    PendingJob,
    QueueState,
    RunningJob,
    Snapshot,
    TaskRequest,
)
from tessera.scheduler.preempt import PREEMPTING

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
"""The ``now`` of every snapshot built here."""
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
        self._preemptible = False
        self._min_available: int | None = None
        self._runtime_s: float | None = None
        self.run_on: tuple[str | None, float] | None = None  # (node, minutes ago) once running()

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

    def preemptible(self, preemptible: bool = True) -> JobBuilder:
        self._preemptible = preemptible
        return self

    def min_available(self, count: int) -> JobBuilder:
        """Gang size: at least this many tasks placed together (default: all)."""
        self._min_available = count
        return self

    def runtime(self, minutes: float) -> JobBuilder:
        """Declare an expected runtime."""
        self._runtime_s = minutes * 60
        return self

    def running(self, on: str | None = None, started_minutes_ago: float = 10) -> JobBuilder:
        """Make this a running job for :func:`start`: placed first-fit (on node ``on`` if given)."""
        self.run_on = (on, started_minutes_ago)
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
            preemptible=self._preemptible,
            min_available=self._min_available,
            expected_runtime_s=self._runtime_s,
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

    def mig_mode(self, index: int, *instances: tuple[str, str | int]) -> NodeBuilder:
        """Put GPU ``index`` in MIG mode with these (profile, memory) instances."""
        gpu = self._gpus[index]
        migs = tuple(
            MigState(uuid=f"MIG-{gpu.uuid}-{i}", profile=profile, memory_mib=parse_memory_mib(memory))
            for i, (profile, memory) in enumerate(instances)
        )
        self._gpus[index] = dataclasses.replace(gpu, mig_mode=True, mig=migs)
        return self

    def nvlink(self, *islands: Iterable[int]) -> NodeBuilder:
        """Link every GPU of each island (by index) to the others of that island."""
        for island in islands:
            members = list(island)
            for i in members:
                peers = tuple(self._gpus[j].uuid for j in members if j != i)
                self._gpus[i] = dataclasses.replace(self._gpus[i], nvlink_peers=peers)
        return self

    def numa(self, *nodes: Iterable[int]) -> NodeBuilder:
        """Put the GPUs of each group (by index) on NUMA node 0, 1, ..."""
        for numa, members in enumerate(nodes):
            for i in members:
                self._gpus[i] = dataclasses.replace(self._gpus[i], numa_node=numa)
        return self

    def mig_used(self, index: int, instance: int) -> NodeBuilder:
        """Mark MIG instance ``instance`` of GPU ``index`` as taken."""
        gpu = self._gpus[index]
        migs = list(gpu.mig)
        migs[instance] = dataclasses.replace(migs[instance], used=True)
        self._gpus[index] = dataclasses.replace(gpu, mig=tuple(migs))
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


def snapshot(
    nodes: Iterable[NodeState],
    jobs: Iterable[PendingJob],
    running: Iterable[RunningJob] = (),
    queues: Iterable[QueueState] = (),
) -> Snapshot:
    """A snapshot at a fixed time (NOW)."""
    return Snapshot(
        nodes=tuple(nodes), pending=tuple(jobs), now=NOW, running=tuple(running), queues=tuple(queues)
    )


def apply_binds(
    nodes: Iterable[NodeState], jobs: Iterable[PendingJob], binds: Iterable[Bind]
) -> list[NodeState]:
    """Nodes with every bind's usage added: GPU memory/compute and host CPU/memory per task."""
    binds = list(binds)
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
    migs = {p.mig_uuid for b in binds for p in b.placements if p.mig_uuid}
    out = []
    for name, node in by_name.items():
        gpus = tuple(
            dataclasses.replace(
                g,
                used_memory_mib=g.used_memory_mib + gpu_use.get((name, g.uuid), (0, 0.0))[0],
                used_compute_pct=g.used_compute_pct + gpu_use.get((name, g.uuid), (0, 0.0))[1],
                mig=tuple(dataclasses.replace(m, used=True) if m.uuid in migs else m for m in g.mig),
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


def _amounts(gpu: float, cpu: float, memory: str | int) -> Amounts:
    return Amounts(float(gpu), float(cpu), float(parse_memory_mib(memory)))


class QueueBuilder:
    """Builds a QueueState: no quota (unlimited borrowing), weight 1, a root unless parent() is called."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._parent: str | None = None
        self._guaranteed = Amounts()
        self._borrow: Amounts | None = None
        self._weight = 1.0

    def guaranteed(self, gpu: float = 0, cpu: float = 0, memory: str | int = 0) -> QueueBuilder:
        self._guaranteed = _amounts(gpu, cpu, memory)
        return self

    def borrow(self, gpu: float = 0, cpu: float = 0, memory: str | int = 0) -> QueueBuilder:
        """Borrowing limit beyond the guarantee."""
        self._borrow = _amounts(gpu, cpu, memory)
        return self

    def weight(self, weight: float) -> QueueBuilder:
        self._weight = weight
        return self

    def parent(self, parent: str) -> QueueBuilder:
        self._parent = parent
        return self

    def build(self) -> QueueState:
        return QueueState(self._name, self._parent, self._guaranteed, self._borrow, self._weight)


def make_queue(name: str) -> QueueBuilder:
    """Start a queue builder."""
    return QueueBuilder(name)


def to_running(job: PendingJob, bind: Bind, started_at: datetime) -> RunningJob:
    """The running job a bind makes: its placements and its placed tasks' host usage."""
    resources = {t.task_id: t.resources for t in job.tasks}
    nodes = bind.task_nodes()
    host = tuple(
        (nodes[t.task_id], t.resources.cpu, t.resources.memory) for t in job.tasks if t.task_id in nodes
    )
    return RunningJob(
        job_id=job.job_id,
        name=job.name,
        queue=job.queue,
        priority=job.priority,
        preemptible=job.preemptible,
        started_at=started_at,
        placements=bind.placements,
        cpu=sum(resources[t].cpu for t in nodes),
        memory_mib=sum(resources[t].memory for t in nodes),
        host_usage=host,
        expected_runtime_s=job.expected_runtime_s,
        backfill_until=bind.backfill_until,
    )


def start(
    nodes: Iterable[NodeState | NodeBuilder], running: Iterable[JobBuilder]
) -> tuple[list[NodeState], list[RunningJob]]:
    """Nodes with these jobs already running on them (first fit, in order), and the running jobs."""
    states = [n.build() if isinstance(n, NodeBuilder) else n for n in nodes]
    out = []
    for builder in running:
        job = builder.build()
        on, minutes = builder.run_on or (None, 10)
        targets = [n for n in states if on is None or n.name == on]
        decisions = FirstFit().cycle(snapshot(targets, [job]))
        assert decisions.binds, f"running job {job.name} does not fit: {decisions.pending}"
        states = apply_binds(states, [job], decisions.binds)
        out.append(to_running(job, decisions.binds[0], NOW - timedelta(minutes=minutes)))
    return states, out


def release(nodes: Iterable[NodeState], jobs: Iterable[RunningJob]) -> list[NodeState]:
    """Nodes with these running jobs' usage taken off."""
    jobs = list(jobs)
    gpu_use: dict[tuple[str, str], tuple[int, float]] = {}
    host_use: dict[str, tuple[float, int]] = {}
    for job in jobs:
        for p in job.placements:
            if p.gpu_uuid is not None:
                memory, compute = gpu_use.get((p.node, p.gpu_uuid), (0, 0.0))
                gpu_use[(p.node, p.gpu_uuid)] = (memory + p.memory_mib, compute + p.compute_pct)
        for where, cpu, memory_mib in job.host_usage:
            used_cpu, used_memory = host_use.get(where, (0.0, 0))
            host_use[where] = (used_cpu + cpu, used_memory + memory_mib)
    migs = {p.mig_uuid for j in jobs for p in j.placements if p.mig_uuid}
    out = []
    for node in nodes:
        gpus = tuple(
            dataclasses.replace(
                g,
                used_memory_mib=g.used_memory_mib - gpu_use.get((node.name, g.uuid), (0, 0.0))[0],
                used_compute_pct=max(0.0, g.used_compute_pct - gpu_use.get((node.name, g.uuid), (0, 0.0))[1]),
                mig=tuple(dataclasses.replace(m, used=False) if m.uuid in migs else m for m in g.mig),
            )
            for g in node.gpus
        )
        cpu, memory = host_use.get(node.name, (0.0, 0))
        out.append(
            dataclasses.replace(
                node,
                gpus=gpus,
                used_cpu=max(0.0, node.used_cpu - cpu),
                used_memory_mib=node.used_memory_mib - memory,
            )
        )
    return out


def apply_decisions(snap: Snapshot, decisions: Decisions, specs: Mapping[uuid.UUID, PendingJob]) -> Snapshot:
    """The snapshot a minute later: binds running, evicted jobs stopped and pending again (from ``specs``)."""
    pending = {j.job_id: j for j in snap.pending}
    running = {j.job_id: j for j in snap.running}
    evicted = [running.pop(e.job_id) for e in decisions.evictions]
    nodes = release(snap.nodes, evicted)
    bound = [pending.pop(b.job_id) for b in decisions.binds]
    nodes = apply_binds(nodes, bound, decisions.binds)
    for job, bind in zip(bound, decisions.binds, strict=True):
        running[job.job_id] = to_running(job, bind, snap.now)
    for stopped in evicted:
        pending[stopped.job_id] = specs[stopped.job_id]
    # what the control plane keeps of a pending reason: the claims of preemptors and reservation holders
    for job_id, job in pending.items():
        reason = decisions.pending.get(job_id)
        code = reason.code if reason is not None else None
        pending[job_id] = dataclasses.replace(job, preempting=code == PREEMPTING, reserved=code == RESERVED)
    return dataclasses.replace(
        snap,
        nodes=tuple(nodes),
        pending=tuple(pending.values()),
        running=tuple(running.values()),
        now=snap.now + timedelta(minutes=1),
    )


def finish_due(snap: Snapshot) -> Snapshot:
    """End the running jobs whose expected runtime is over, freeing their slices."""
    done = [j for j in snap.running if j.expected_end is not None and j.expected_end <= snap.now]
    if not done:
        return snap
    gone = {j.job_id for j in done}
    return dataclasses.replace(
        snap,
        nodes=tuple(release(snap.nodes, done)),
        running=tuple(j for j in snap.running if j.job_id not in gone),
    )
