"""The scheduler's in-memory view of the cluster, kept current change by change.

Each job is turned into the scheduler's model once per version it reaches (a
pending job, a placed job, and what it holds on which GPU and node), and each
node's usage is summed again only when a job on it or the node itself changed.
A cycle's snapshot is then assembled from these pieces: the work per cycle
follows what changed, not the size of the cluster.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from tessera.api.cluster import Node, NodeState
from tessera.api.datasets import Dataset
from tessera.api.events import Change
from tessera.api.jobs import Allocation, DataMount, Job, JobState, Task, TaskState
from tessera.api.queues import Queue
from tessera.api.resources import ResourceAmounts
from tessera.platform.services import convert
from tessera.platform.services.datasets import render_dataset
from tessera.platform.services.jobs import render_job
from tessera.platform.store.db import Database
from tessera.platform.store.rows import AllocationRow, DatasetRow, JobRow, NodeRow, QueueRow, RevisionRow
from tessera.scheduler import model
from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.preempt import PREEMPTING

PREEMPT_CLAIM = timedelta(seconds=90)
"""How long a job that evicted others keeps its claim on the room (victims that never exit, a
node lost): after that it may evict again rather than be stuck behind an eviction that frees nothing."""

_GpuUse = tuple[str, str, int, float, str | None]  # (node, GPU uuid, memory MiB, compute %, MIG uuid)
_HostUse = tuple[str, float, int]  # (node, cpu, memory MiB)


@dataclass(frozen=True, slots=True)
class _Derived:
    """One job as the scheduler sees it, at one version."""

    pending: model.PendingJob | None
    running: model.RunningJob | None
    gpus: tuple[_GpuUse, ...]  # slices it holds: its allocations and its draining ones
    hosts: tuple[_HostUse, ...]  # host share of its bound tasks
    claim_until: datetime | None  # a pending preemptor's claim on the room it freed

    @property
    def nodes(self) -> set[str]:
        return {g[0] for g in self.gpus} | {h[0] for h in self.hosts}


@dataclass
class ClusterView:
    """Live jobs, nodes and queues as of ``revision``, with their scheduler model cached."""

    revision: int = -1
    placement: str = "tessera"  # the cluster's placement policy
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    datasets: dict[uuid.UUID, Dataset] = field(default_factory=dict)
    _derived: dict[uuid.UUID, _Derived] = field(default_factory=dict)
    _on_node: dict[str, set[uuid.UUID]] = field(default_factory=lambda: defaultdict(set))
    _node_states: dict[str, model.NodeState] = field(default_factory=dict)
    _stale: set[str] = field(default_factory=set)  # nodes whose usage or inventory changed
    _queue_states: tuple[model.QueueState, ...] | None = None
    # when pending preemptors' claims on the room they freed run out (those still ahead at the
    # last snapshot): nothing in the store changes then, so the loop wakes for them
    claims: list[datetime] = field(default_factory=list)

    def apply(self, change: Change) -> bool:
        """Fold one change of the feed into the view; False when the scheduler's input is as it was
        (a job's new version that differs only in what the scheduler does not read, such as a
        pending reason the loop itself wrote)."""
        if change.kind == "job":
            if change.op == "delete" or change.object is None:
                return self.remove_job(change.id)
            return self.put_job(Job.model_validate(change.object))
        if change.kind == "dataset":
            if change.op == "delete" or change.object is None:
                self.datasets.pop(change.id, None)
            else:
                self.datasets[change.id] = Dataset.model_validate(change.object)
        elif change.kind == "queue":
            if change.op == "delete" or change.object is None:
                self.queues = {k: v for k, v in self.queues.items() if v.id != change.id}
            else:
                queue = Queue.model_validate(change.object)
                self.queues[queue.name] = queue
            self._queue_states = None
        elif change.kind == "node":
            if change.op == "delete" or change.object is None:
                gone = [k for k, v in self.nodes.items() if v.id == change.id]
                for name in gone:
                    del self.nodes[name]
                    self._node_states.pop(name, None)
            else:
                node = Node.model_validate(change.object)
                self.nodes[node.name] = node
                self._stale.add(node.name)
        return True

    def put_job(self, job: Job) -> bool:
        """A job's new version: re-derive it and mark the nodes it held or holds; returns whether
        what the scheduler sees of it changed."""
        if job.status.state.terminal and not job.draining:
            return self.remove_job(job.id)
        before = self._derived.get(job.id)
        self.jobs[job.id] = job  # binds are conditional on the version: always the latest
        derived = _derive(job)
        if derived == before:
            return False
        self.remove_job(job.id)
        self.jobs[job.id] = job
        self._derived[job.id] = derived
        for name in derived.nodes:
            self._on_node[name].add(job.id)
            self._stale.add(name)
        return True

    def remove_job(self, job_id: uuid.UUID) -> bool:
        """Forget a job; returns whether the view held it."""
        self.jobs.pop(job_id, None)
        old = self._derived.pop(job_id, None)
        if old is None:
            return False
        for name in old.nodes:
            self._on_node[name].discard(job_id)
            self._stale.add(name)
        return True

    def snapshot(self, now: datetime) -> model.Snapshot:
        """The scheduler's input: cached pieces, with usage re-summed on changed nodes only."""
        for name in self._stale:
            node = self.nodes.get(name)
            if node is not None:
                self._node_states[name] = self._node_state(node)
        self._stale.clear()
        pending: list[model.PendingJob] = []
        running: list[model.RunningJob] = []
        self.claims = []
        for derived in self._derived.values():
            if derived.pending is not None:
                job = derived.pending
                if derived.claim_until is not None and now < derived.claim_until:
                    job = dataclasses.replace(job, preempting=True)
                    self.claims.append(derived.claim_until)
                spec = self.jobs[job.job_id].spec
                if spec.data:
                    job = self._with_data(job, spec.data)
                if spec.node_selector:
                    job = self._with_selector(job, spec.node_selector)
                pending.append(job)
            elif derived.running is not None:
                running.append(derived.running)
        if self._queue_states is None:
            ordered = sorted(self.queues.values(), key=lambda q: q.name)
            self._queue_states = tuple(_queue_state(q) for q in ordered)
        return model.Snapshot(
            nodes=tuple(self._node_states[name] for name in sorted(self._node_states)),
            pending=tuple(pending),
            now=now,
            running=tuple(running),
            queues=self._queue_states,
            placement=self.placement,
        )

    def _with_data(self, job: model.PendingJob, mounts: list[DataMount]) -> model.PendingJob:
        """The job's data locality: per node, the share of its datasets' bytes cached there; and, if
        a mount requires it, the nodes holding all of those datasets."""
        total = 0
        held: dict[str, int] = defaultdict(int)
        required: list[set[str]] = []
        for mount in mounts:
            dataset = self.datasets.get(mount.dataset_id) if mount.dataset_id else None
            size = dataset.status.total_bytes if dataset is not None else None
            full: set[str] = set()
            if dataset is not None and size:
                total += size
                for cache in dataset.status.nodes:
                    held[cache.node] += min(cache.cached_bytes, size)
                    if cache.cached_bytes >= size:
                        full.add(cache.node)
            if mount.locality == "required":
                required.append(full)
        locality = tuple(sorted((n, b / total) for n, b in held.items() if b)) if total else ()
        only = frozenset(set.intersection(*required)) if required else None
        return dataclasses.replace(job, locality=locality, data_nodes=only)

    def _with_selector(self, job: model.PendingJob, selector: dict[str, str]) -> model.PendingJob:
        """Only the nodes whose labels match the selector may run the job."""
        allowed = frozenset(
            name
            for name, node in self.nodes.items()
            if all(node.labels.get(k) == v for k, v in selector.items())
        )
        only = allowed if job.data_nodes is None else job.data_nodes & allowed
        return dataclasses.replace(job, data_nodes=only, selector=tuple(sorted(selector.items())))

    def _node_state(self, node: Node) -> model.NodeState:
        gpu_memory: dict[str, int] = defaultdict(int)
        gpu_compute: dict[str, list[float]] = defaultdict(list)
        migs: set[str] = set()
        cpu: list[float] = []
        memory = 0
        for job_id in self._on_node.get(node.name, ()):
            derived = self._derived[job_id]
            for where, gpu, mem, pct, mig in derived.gpus:
                if where == node.name:
                    gpu_memory[gpu] += mem
                    gpu_compute[gpu].append(pct)
                    if mig is not None:
                        migs.add(mig)
            for where, c, m in derived.hosts:
                if where == node.name:
                    cpu.append(c)
                    memory += m
        gpus = tuple(
            model.GpuState(
                uuid=g.uuid,
                index=g.index,
                model=g.model,
                memory_mib=g.memory_mib,
                used_memory_mib=gpu_memory.get(g.uuid, 0),
                used_compute_pct=math.fsum(gpu_compute.get(g.uuid, ())),
                mig_mode=g.mig_mode,
                numa_node=g.numa_node,
                nvlink_peers=tuple(g.nvlink_peers),
                mig=tuple(
                    model.MigState(
                        uuid=m.uuid, profile=m.profile, memory_mib=m.memory_mib, used=m.uuid in migs
                    )
                    for m in g.mig_instances
                ),
            )
            for g in node.inventory.gpus
        )
        return model.NodeState(
            name=node.name,
            ready=node.state is NodeState.READY,
            cpu=node.inventory.cpu,
            memory_mib=node.inventory.memory,
            gpus=gpus,
            used_cpu=math.fsum(cpu),
            used_memory_mib=memory,
        )


def _derive(job: Job) -> _Derived:
    """What the scheduler needs of one job version."""
    gpus = [
        (a.node, a.gpu_uuid, a.memory_mib, a.compute_pct, a.mig_instance) for a in job.draining if a.gpu_uuid
    ]
    if job.status.state.terminal:  # only its draining slices still count
        return _Derived(None, None, tuple(gpus), (), None)
    groups = {g.name: g for g in job.spec.groups}
    if job.status.state is JobState.PENDING:
        gang = sum(g.gang_size for g in job.spec.groups)
        tasks = tuple(
            model.TaskRequest(task_id=t.id, group=t.group, index=t.index, resources=groups[t.group].resources)
            for t in sorted(job.tasks, key=lambda t: (t.group, t.index))
        )
        if job.spec.elastic is not None:  # replacements of retired workers: still max_workers in all
            tasks = tasks[: job.spec.elastic.max_workers]
        reason = job.status.pending_reason
        pending = model.PendingJob(
            job_id=job.id,
            name=job.name,
            queue=job.queue,
            priority=job.spec.priority,
            submitted_at=job.status.submitted_at,
            tasks=tasks,
            preemptible=job.spec.preemptible,
            min_available=gang if gang < len(tasks) else None,
            expected_runtime_s=_seconds(job.spec.expected_runtime),
            reserved=reason is not None and reason.code == RESERVED,
        )
        claim = job.updated_at + PREEMPT_CLAIM if reason is not None and reason.code == PREEMPTING else None
        return _Derived(pending, None, tuple(gpus), (), claim)
    gpus += [
        (a.node, a.gpu_uuid, a.memory_mib, a.compute_pct, a.mig_instance)
        for a in job.allocations
        if a.gpu_uuid
    ]
    bound = {a.task_id for a in job.allocations}
    hosts = tuple(
        (t.node, groups[t.group].resources.cpu, groups[t.group].resources.memory)
        for t in job.tasks
        if t.node and t.id in bound
    )
    placements = tuple(
        model.SlicePlacement(
            task_id=a.task_id,
            node=a.node,
            gpu_uuid=a.gpu_uuid,
            gpu_index=None,
            memory_mib=a.memory_mib,
            compute_pct=a.compute_pct,
            mig_uuid=a.mig_instance,
        )
        for a in job.allocations
    )
    running = model.RunningJob(
        job_id=job.id,
        name=job.name,
        queue=job.queue,
        priority=job.spec.priority,
        preemptible=job.spec.preemptible,
        started_at=job.status.started_at or job.status.submitted_at,
        placements=placements,
        cpu=sum(h[1] for h in hosts),
        memory_mib=sum(h[2] for h in hosts),
        host_usage=hosts,
        expected_runtime_s=_seconds(job.spec.expected_runtime),
        backfill_until=job.status.backfill_until,
        protected=job.spec.kind == "serve" and not job.spec.preemptible,
        elastic=_elastic(job, bound),
        version=job.version,
    )
    return _Derived(None, running, tuple(gpus), hosts, None)


_GROWS = frozenset({JobState.RUNNING, JobState.RESIZING})
_SHRINKS = frozenset({JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING})


def _elastic(job: Job, bound: set[uuid.UUID]) -> model.ElasticRun | None:
    """An elastic job's extras (bound beyond the gang, newest first) and what it may still grow into."""
    spec = job.spec.elastic
    if spec is None:
        return None
    resources = job.spec.groups[0].resources

    def request(t: Task) -> model.TaskRequest:
        return model.TaskRequest(task_id=t.id, group=t.group, index=t.index, resources=resources)

    holding = sorted((t for t in job.tasks if t.id in bound), key=lambda t: t.index, reverse=True)
    extras = holding[: max(0, len(holding) - spec.min_workers)] if job.status.state in _SHRINKS else []
    room = spec.max_workers - len(holding)
    free = sorted(
        (t for t in job.tasks if t.id not in bound and t.state is TaskState.PENDING), key=lambda t: t.index
    )
    growable = free[: max(0, room)] if job.status.state in _GROWS else []
    return model.ElasticRun(
        min_workers=spec.min_workers,
        max_workers=spec.max_workers,
        extras=tuple(request(t) for t in extras),
        growable=tuple(request(t) for t in growable),
    )


def _gpu_use(a: Allocation) -> _GpuUse:
    return (a.node, a.gpu_uuid or "", a.memory_mib, a.compute_pct, a.mig_instance)


def _seconds(delta: timedelta | None) -> float | None:
    return delta.total_seconds() if delta is not None else None


def _amounts(amounts: ResourceAmounts | None) -> model.Amounts | None:
    if amounts is None:
        return None
    return model.Amounts(gpu=amounts.gpu, cpu=amounts.cpu, memory_mib=amounts.memory)


def _queue_state(queue: Queue) -> model.QueueState:
    return model.QueueState(
        name=queue.name,
        parent=queue.spec.parent,
        guaranteed=_amounts(queue.spec.guaranteed) or model.Amounts(),
        borrowing_limit=_amounts(queue.spec.borrowing_limit),
        weight=queue.spec.weight,
        placement=queue.spec.placement,
    )


def load_view(db: Database, placement: str = "tessera") -> ClusterView:
    """A full read of live jobs, nodes and queues (the initial list; explain)."""
    view = ClusterView(placement=placement)
    with db.read() as session:
        view.revision = session.execute(select(RevisionRow.revision)).scalar_one()
        for node_row in session.execute(select(NodeRow)).scalars():
            node = convert.node(node_row)
            view.nodes[node.name] = node
            view._stale.add(node.name)
        for queue_row in session.execute(select(QueueRow)).scalars():
            view.queues[queue_row.name] = convert.queue(queue_row)
        for dataset_row in session.execute(select(DatasetRow)).scalars():
            view.datasets[dataset_row.id] = render_dataset(session, dataset_row)
        draining = select(AllocationRow.job_id).where(AllocationRow.releasing.is_(True))
        live_or_draining = JobRow.live_name.is_not(None) | JobRow.id.in_(draining)
        for row in session.execute(select(JobRow).where(live_or_draining)).scalars():
            view.put_job(render_job(session, row))
    return view
