"""The scheduling loop: an in-memory snapshot kept current from the change feed,
a scheduler cycle over it, then conditional binds and pending reasons.

The snapshot is never re-read in full per cycle: after one initial list it is
updated from the change log (``job`` and ``node`` changes), and re-listed only
when the log was compacted past it.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from tessera.api.cluster import Node, NodeState
from tessera.api.events import Change
from tessera.api.jobs import Job, JobState, JobStatus, PendingReason
from tessera.api.queues import Queue
from tessera.api.resources import ResourceAmounts
from tessera.platform.services import convert
from tessera.platform.services.common import put
from tessera.platform.services.execution import bind_job, evict_job
from tessera.platform.services.jobs import render_job
from tessera.platform.store.db import Database
from tessera.platform.store.feed import Compacted, changes_after
from tessera.platform.store.rows import AllocationRow, JobRow, NodeRow, QueueRow, RevisionRow
from tessera.platform.store.types import utcnow
from tessera.scheduler import model
from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.preempt import PREEMPTING
from tessera.scheduler.registry import make

log = logging.getLogger(__name__)
KINDS = ("job", "node", "queue")


@dataclass
class ClusterView:
    """Live jobs and nodes as of ``revision``, maintained incrementally."""

    revision: int = -1
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)

    def apply(self, change: Change) -> None:
        if change.kind == "job":
            if change.op == "delete" or change.object is None:
                self.jobs.pop(change.id, None)
                return
            job = Job.model_validate(change.object)
            if job.status.state.terminal and not job.draining:
                self.jobs.pop(job.id, None)
            else:
                self.jobs[job.id] = job
        elif change.kind == "queue":
            if change.op == "delete" or change.object is None:
                self.queues = {k: v for k, v in self.queues.items() if v.id != change.id}
            else:
                queue = Queue.model_validate(change.object)
                self.queues[queue.name] = queue
        elif change.kind == "node":
            if change.op == "delete" or change.object is None:
                self.nodes = {k: v for k, v in self.nodes.items() if v.id != change.id}
            else:
                node = Node.model_validate(change.object)
                self.nodes[node.name] = node

    def snapshot(self, now: datetime) -> model.Snapshot:
        used_gpu: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        used_host: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        pending: list[model.PendingJob] = []
        running: list[model.RunningJob] = []
        for job in self.jobs.values():
            for alloc in job.draining:  # ended attempts' slices until their processes exit
                if alloc.gpu_uuid:
                    used_gpu[alloc.gpu_uuid][0] += alloc.memory_mib
                    used_gpu[alloc.gpu_uuid][1] += alloc.compute_pct
            if job.status.state.terminal:
                continue
            if job.status.state is JobState.PENDING:
                groups = {g.name: g for g in job.spec.groups}
                gang = sum(g.gang_size for g in job.spec.groups)
                tasks = tuple(
                    model.TaskRequest(
                        task_id=t.id, group=t.group, index=t.index, resources=groups[t.group].resources
                    )
                    for t in sorted(job.tasks, key=lambda t: (t.group, t.index))
                )
                pending.append(
                    model.PendingJob(
                        job_id=job.id,
                        name=job.name,
                        queue=job.queue,
                        priority=job.spec.priority,
                        submitted_at=job.status.submitted_at,
                        tasks=tasks,
                        preemptible=job.spec.preemptible,
                        preempting=_claiming(job, now),
                        reserved=_holds_reservation(job),
                        min_available=gang if gang < len(tasks) else None,
                        expected_runtime_s=_seconds(job.spec.expected_runtime),
                    )
                )
                continue
            running.append(_running(job))
            for alloc in job.allocations:
                if alloc.gpu_uuid:
                    used_gpu[alloc.gpu_uuid][0] += alloc.memory_mib
                    used_gpu[alloc.gpu_uuid][1] += alloc.compute_pct
            groups = {g.name: g for g in job.spec.groups}
            bound = {a.task_id for a in job.allocations}
            for task in job.tasks:
                if task.node and task.id in bound:
                    used_host[task.node][0] += groups[task.group].resources.cpu
                    used_host[task.node][1] += groups[task.group].resources.memory
        nodes = []
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            gpus = tuple(
                model.GpuState(
                    uuid=g.uuid,
                    index=g.index,
                    model=g.model,
                    memory_mib=g.memory_mib,
                    used_memory_mib=int(used_gpu[g.uuid][0]),
                    used_compute_pct=used_gpu[g.uuid][1],
                    mig_mode=g.mig_mode,
                )
                for g in node.inventory.gpus
            )
            nodes.append(
                model.NodeState(
                    name=node.name,
                    ready=node.state is NodeState.READY,
                    cpu=node.inventory.cpu,
                    memory_mib=node.inventory.memory,
                    gpus=gpus,
                    used_cpu=used_host[node.name][0],
                    used_memory_mib=int(used_host[node.name][1]),
                )
            )
        queues = tuple(_queue_state(q) for q in sorted(self.queues.values(), key=lambda q: q.name))
        return model.Snapshot(
            nodes=tuple(nodes), pending=tuple(pending), now=now, running=tuple(running), queues=queues
        )


PREEMPT_CLAIM = timedelta(seconds=90)


def _claiming(job: Job, now: datetime) -> bool:
    """It evicted jobs recently and waits for the room: it may not evict more meanwhile.

    The claim lapses after PREEMPT_CLAIM (victims that never exit, a node lost), so a job
    is never stuck behind an eviction that will not free anything.
    """
    reason = job.status.pending_reason
    return reason is not None and reason.code == PREEMPTING and now - job.updated_at < PREEMPT_CLAIM


def _holds_reservation(job: Job) -> bool:
    reason = job.status.pending_reason
    return reason is not None and reason.code == RESERVED


def _both_preempting(old: PendingReason | None, new: PendingReason) -> bool:
    # keep the first Preempting reason (it names the victims and dates the claim)
    return old is not None and old.code == new.code == PREEMPTING


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
    )


def _running(job: Job) -> model.RunningJob:
    """What evicting a placed job would free: its slices and its tasks' host share."""
    groups = {g.name: g for g in job.spec.groups}
    bound = {a.task_id for a in job.allocations}
    host = tuple(
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
        )
        for a in job.allocations
    )
    return model.RunningJob(
        job_id=job.id,
        name=job.name,
        queue=job.queue,
        priority=job.spec.priority,
        preemptible=job.spec.preemptible,
        started_at=job.status.started_at or job.status.submitted_at,
        placements=placements,
        cpu=sum(h[1] for h in host),
        memory_mib=sum(h[2] for h in host),
        host_usage=host,
        expected_runtime_s=_seconds(job.spec.expected_runtime),
        backfill_until=job.status.backfill_until,
    )


def load_view(db: Database) -> ClusterView:
    """A full read of live jobs, nodes and queues (the initial list; explain)."""
    view = ClusterView()
    with db.read() as session:
        view.revision = session.execute(select(RevisionRow.revision)).scalar_one()
        draining = select(AllocationRow.job_id).where(AllocationRow.releasing.is_(True))
        live_or_draining = JobRow.live_name.is_not(None) | JobRow.id.in_(draining)
        for row in session.execute(select(JobRow).where(live_or_draining)).scalars():
            job = render_job(session, row)
            view.jobs[job.id] = job
        for node_row in session.execute(select(NodeRow)).scalars():
            view.nodes[node_row.name] = convert.node(node_row)
        for queue_row in session.execute(select(QueueRow)).scalars():
            view.queues[queue_row.name] = convert.queue(queue_row)
    return view


class SchedulingLoop:
    """One scheduler, one view; ``step()`` is one cycle (the leader calls it periodically)."""

    def __init__(self, db: Database, scheduler: model.Scheduler | None = None) -> None:
        self.db = db
        self.scheduler = scheduler or make("tessera")
        self.view = ClusterView()
        self._dirty = True
        self._wake_at: datetime | None = None  # a time-driven decision is due then (a backfill's end)

    def sync(self) -> None:
        """Bring the view up to date: a full list once, then the change feed."""
        if self.view.revision < 0:
            self._relist()
            return
        while True:
            try:
                with self.db.read() as session:
                    changes, resume = changes_after(session, self.view.revision, kinds=KINDS)
            except Compacted:
                self._relist()
                return
            for change in changes:
                self.view.apply(change)
            self._dirty |= bool(changes)
            self.view.revision = resume
            if not changes:
                return

    def _relist(self) -> None:
        self.view, self._dirty = load_view(self.db), True

    def step(self, now: datetime | None = None) -> model.Decisions | None:
        """Sync, and run a cycle if anything changed since the last one."""
        self.sync()
        now = now or utcnow()
        if not self._dirty and (self._wake_at is None or now < self._wake_at):
            return None
        snapshot = self.view.snapshot(now)
        decisions = self.scheduler.cycle(snapshot)
        self._apply(decisions)
        self._dirty = bool(decisions.binds)  # after binds, look again next time
        # nothing in the store changes when a backfill runs past its time, but a holder may then evict it
        ends = [j.backfill_until for j in snapshot.running if j.backfill_until and j.backfill_until > now]
        self._wake_at = min(ends, default=None)
        return decisions

    def _apply(self, decisions: model.Decisions) -> None:
        for eviction in decisions.evictions:
            job = self.view.jobs.get(eviction.job_id)
            if job is None:
                continue
            try:
                with self.db.write() as tx:
                    evict_job(tx, eviction.job_id, job.version, eviction.reason, eviction.message)
            except Exception:
                log.exception("eviction of job %s failed", eviction.job_id)
            self._dirty = True
        if decisions.binds:
            self._bind(decisions.binds)
        stale = {
            job_id: reason
            for job_id, reason in decisions.pending.items()
            if (job := self.view.jobs.get(job_id)) is not None
            and job.status.pending_reason != reason
            and not _both_preempting(job.status.pending_reason, reason)
        }
        if stale:
            self._write_reasons(stale)

    def _bind(self, binds: tuple[model.Bind, ...]) -> None:
        """All of a cycle's binds in one transaction (one revision), each in its own savepoint,
        so one refused bind never undoes the others."""
        with self.db.write() as tx:
            for bind in binds:
                job = self.view.jobs.get(bind.job_id)
                if job is None:
                    continue
                try:
                    with tx.session.begin_nested():
                        bound = bind_job(tx, bind.job_id, job.version, bind)
                except Exception:
                    log.exception("bind of job %s failed", bind.job_id)
                    bound = False
                if not bound:
                    self._dirty = True

    def _write_reasons(self, reasons: dict[uuid.UUID, PendingReason]) -> None:
        with self.db.write() as tx:
            for job_id, reason in reasons.items():
                row = tx.session.get(JobRow, job_id)
                if row is None or row.state != JobState.PENDING.value:
                    continue
                status = JobStatus.model_validate(row.status)
                if status.pending_reason == reason:
                    continue
                row.status = status.model_copy(update={"pending_reason": reason}).model_dump(mode="json")
                put(tx, "job", row, lambda r: render_job(tx.session, r))
