"""The serving controller: each tick, every revision's desired replicas from the gateways' traffic
(kpa.py), then replicas started, drained and stopped to match, and their states from their
workloads. It writes only when something changed. Also the gateway's report handler."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.events import EventType
from tessera.api.jobs import JobState, JobStatus
from tessera.api.serving import GatewayReport, ReplicaState, RouteTable, ServiceSpec
from tessera.platform.controllers.kpa import ConcurrencyWindow, Decision, ScaleState, decide
from tessera.platform.services.common import emit, put
from tessera.platform.services.replicas import (
    LIVE,
    RUNNING,
    finish_drains,
    follow_workloads,
    mark_ready,
    prune_ended,
    route_table,
    scale_revision,
    startup_overdue,
    summarize,
)
from tessera.platform.services.serving import render_revision
from tessera.platform.services.traffic import HORIZON_S, Traffic
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow, ProjectRow, ReplicaRow, ServiceRevisionRow, ServiceRow

log = logging.getLogger(__name__)
DRAIN_TIMEOUT = timedelta(seconds=60)
_EMPTY = ConcurrencyWindow(HORIZON_S)


def _workload_moved(replica: ReplicaRow, job: JobRow | None) -> bool:
    """Whether following its workload would change the replica (so the tick must write)."""
    if job is None:
        return True
    state = JobState(job.state)
    if state.terminal:
        return True
    if state is JobState.PENDING:
        return replica.state in (ReplicaState.STARTING.value, ReplicaState.READY.value) or bool(
            replica.endpoint
        )
    if job.state in RUNNING:
        master = JobStatus.model_validate(job.status).master
        return master is not None and replica.endpoint != f"{master.address}:{master.port}"
    return False


class ServingLoop:
    """One instance per control plane; its scale memory (panic, idle since) lives between ticks."""

    def __init__(self, db: Database, traffic: Traffic, drain_timeout: timedelta = DRAIN_TIMEOUT) -> None:
        self.db = db
        self.traffic = traffic
        self.drain_timeout = drain_timeout
        self.scale: dict[tuple[uuid.UUID, int], ScaleState] = {}
        self.inactive: set[tuple[uuid.UUID, int]] = set()

    def _decide(self, session: Session, service: ServiceRow, now: float) -> dict[int, Decision]:
        decisions = {}
        ready: dict[int, int] = {}
        live: dict[int, int] = {}
        for number, phase in session.execute(
            select(ReplicaRow.revision_number, ReplicaRow.state).where(ReplicaRow.service_id == service.id)
        ).all():
            if phase == ReplicaState.READY.value:
                ready[number] = ready.get(number, 0) + 1
            if phase in LIVE:
                live[number] = live.get(number, 0) + 1
        revs = list(
            session.execute(
                select(ServiceRevisionRow).where(ServiceRevisionRow.service_id == service.id)
            ).scalars()
        )
        # a revision given traffic but not ready yet: the gateways send its share to the ready
        # replicas of others meanwhile, so those stay until it is (like Knative's route, which
        # moves traffic only to a ready revision)
        waiting = [r.number for r in revs if r.traffic_percent > 0 and not ready.get(r.number)]
        covering = any(ready.get(r.number) for r in revs if r.traffic_percent == 0)
        for rev in revs:
            key = (service.id, rev.number)
            state = self.scale.setdefault(key, ScaleState(last_active=now))
            if rev.traffic_percent == 0:
                self.inactive.add(key)
                if waiting and ready.get(rev.number):
                    why = f"keeps serving until revision {', '.join(map(str, waiting))} is ready"
                    decisions[rev.number] = Decision(rev.desired_replicas, False, why)
                else:  # the gateways send it nothing new: its replicas drain and stop
                    decisions[rev.number] = Decision(0, False, "no traffic is routed to it")
                continue
            if key in self.inactive:  # traffic again (a rollback, a split): idle from now, not before
                self.inactive.discard(key)
                state.last_active = now
            spec = ServiceSpec.model_validate(rev.spec)
            window = self.traffic.window(service.id, rev.number)
            held = self.traffic.held(service.id, rev.number, now)
            if window is None:
                # no report since this control plane started: keep the scale it had
                keep = min(max(rev.desired_replicas, 1 if held else 0, spec.min_replicas), spec.max_replicas)
                decisions[rev.number] = Decision(keep, rev.panic, "no traffic reports yet; scale kept")
                continue
            decision = decide(
                spec,
                window,
                state,
                now=now,
                ready=ready.get(rev.number, 0),
                current=rev.desired_replicas,
                held=held,
                cold_start_s=rev.cold_start_s,
                active=True,
            )
            if rev.number in waiting and covering and decision.desired < 1:
                # its share is served elsewhere meanwhile: it sees no traffic of its own to scale on
                decision = Decision(1, decision.panic, decision.reason + "; others serve its share: start 1")
            decisions[rev.number] = decision
        return decisions

    def _must_write(self, session: Session, service: ServiceRow, decisions: dict[int, Decision]) -> bool:
        live: dict[int, int] = {}
        spec = ServiceSpec.model_validate(service.spec)
        replicas = session.execute(select(ReplicaRow).where(ReplicaRow.service_id == service.id)).scalars()
        for replica in replicas:
            if replica.state == ReplicaState.TERMINATING.value:
                return True  # a drain to finish (cheap: drains are short)
            if replica.state in LIVE:
                live[replica.revision_number] = live.get(replica.revision_number, 0) + 1
                job = session.get(JobRow, replica.job_id) if replica.job_id else None
                if _workload_moved(replica, job) or startup_overdue(replica, spec):
                    return True
        revs = session.execute(
            select(ServiceRevisionRow).where(ServiceRevisionRow.service_id == service.id)
        ).scalars()
        for rev in revs:
            decision = decisions.get(rev.number)
            if decision is None:
                continue
            if decision.desired != rev.desired_replicas or decision.panic != rev.panic:
                return True
            if live.get(rev.number, 0) != decision.desired:
                return True
        return False

    def step(self) -> int:
        """One tick; returns how many services it wrote."""
        now = self.traffic.now()
        with self.db.read() as session:
            ids = list(session.execute(select(ServiceRow.id)).scalars())
        for key in [k for k in self.scale if k[0] not in set(ids)]:
            del self.scale[key]
            self.inactive.discard(key)
        self.traffic.retain(set(ids))
        written = 0
        for service_id in ids:
            try:  # one service's trouble must not stop the others' scaling
                with self.db.read() as session:
                    service = session.get(ServiceRow, service_id)
                    if service is None:
                        continue
                    decisions = self._decide(session, service, now)
                    if not self._must_write(session, service, decisions):
                        continue
                self._write(service_id, decisions, now)
                written += 1
            except Exception:
                log.exception("serving controller: service %s failed this tick", service_id)
        return written

    def _write(self, service_id: uuid.UUID, decisions: dict[int, Decision], now: float) -> None:
        with self.db.write() as tx:
            service = tx.session.get(ServiceRow, service_id)
            if service is None:
                return
            follow_workloads(tx, service)
            revs = tx.session.execute(
                select(ServiceRevisionRow)
                .where(ServiceRevisionRow.service_id == service.id)
                .order_by(ServiceRevisionRow.number)
            ).scalars()
            project = tx.session.get(ProjectRow, service.project_id)
            for rev in revs:
                decision = decisions.get(rev.number)
                if decision is None:
                    continue
                if decision.desired != rev.desired_replicas or decision.panic != rev.panic:
                    emit(
                        tx,
                        kind="service",
                        object_id=service.id,
                        object_name=service.name,
                        project=project.name if project else None,
                        reason="Scaled",
                        message=f"revision {rev.number}: {rev.desired_replicas} -> {decision.desired} "
                        f"replicas ({decision.reason})",
                        type=EventType.NORMAL,
                    )
                    rev.desired_replicas, rev.panic = decision.desired, decision.panic
                    put(
                        tx,
                        "revision",
                        rev,
                        lambda r: render_revision(r, service.name, project.name if project else "?"),
                    )
                scale_revision(tx, service, rev, rev.desired_replicas)
            finish_drains(tx, service, lambda rid, rv: self.traffic.drained(rid, rv, now), self.drain_timeout)
            prune_ended(tx, service)
            summarize(tx, service)


def handle_report(db: Database, traffic: Traffic, report: GatewayReport) -> RouteTable:
    """Record a gateway's traffic and readiness probes; answer with the current routes."""
    traffic.record(report)
    ready = {r.replica_id: r.ready for r in report.replicas}
    if ready:
        with db.read() as session:
            changed = [
                row.id
                for row in session.execute(select(ReplicaRow).where(ReplicaRow.id.in_(list(ready)))).scalars()
                if (ready[row.id] and row.state == ReplicaState.STARTING.value)
                or (not ready[row.id] and row.state == ReplicaState.READY.value)
            ]
        if changed:
            with db.write() as tx:
                for replica_id in changed:
                    row = tx.session.get(ReplicaRow, replica_id)
                    if row is not None:
                        mark_ready(tx, row, ready[replica_id])
    revision = db.current_revision()
    with db.read() as session:
        return route_table(session, revision)
