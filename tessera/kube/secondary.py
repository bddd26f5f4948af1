"""Tessera as a secondary scheduler: pods others create (a Kubeflow PyTorchJob's workers, a KServe
predictor) that set ``schedulerName: tessera`` are scheduled by the same core as Tessera's own jobs.

Pods are grouped into gangs by Tessera's annotation, the coscheduling plugin's pod-group label or
Volcano's group annotation; a pod without one is a gang of one. Once at least min-available pods of
a gang wait, the gang becomes a Tessera job (one task per pod, labelled ``tessera.io/external``)
that queues, fair share, quotas and preemption treat like any other. When the scheduler binds it,
each pod gets its binding annotations and is bound through the Binding API; the pods' statuses then
drive the job. A gang whose pods are deleted has its job cancelled; a job Tessera preempts has its
pods deleted, as the default scheduler's preemption does (their controller makes new ones).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

from tessera.api.jobs import Job, JobSpec, JobState, JobStatus, TaskGroupSpec, TaskReport, TaskState
from tessera.api.quantities import parse_memory_mib
from tessera.api.resources import Resources
from tessera.jobs import pending
from tessera.jobs.launch import RUN_STATES, TaskLaunch, launches_for
from tessera.kube import names, pods
from tessera.kube.client import Kube, KubeError, Obj
from tessera.kube.informer import Informer
from tessera.kube.jobcache import JobCache
from tessera.platform.services.common import put
from tessera.platform.services.execution import apply_reports
from tessera.platform.services.jobs import apply_transition, render_job
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow, ProjectRow, TaskRow, UserRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
SCHEDULER_USER = "kube-scheduler"
GROUP = "pod"


class GangError(ValueError):
    """A pod's Tessera annotations are malformed (the message names the annotation)."""


@dataclass
class Gang:
    key: str  # namespace/name
    namespace: str
    name: str
    min_available: int
    pods: list[Obj] = field(default_factory=list)


def _first(mapping: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if mapping.get(k):
            return mapping[k]
    return None


def gang_of(pod: Obj) -> tuple[str, str | None]:
    """(group name, min-available as written) in any of the accepted spellings."""
    meta = pod["metadata"]
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    both = {**labels, **notes}
    group = (
        both.get(names.GANG) or _first(both, names.COSCHEDULING_LABELS) or _first(both, names.VOLCANO_GROUP)
    )
    minimum = (
        both.get(names.GANG_MIN) or _first(both, names.COSCHEDULING_MIN) or _first(both, names.VOLCANO_MIN)
    )
    return (group or f"pod-{meta['name']}"), minimum


def resources_of(pod: Obj) -> Resources:
    """The slice a pod asks for through Tessera's annotations (per pod: its one task)."""
    notes = pod["metadata"].get("annotations") or {}
    body: dict[str, object] = {}
    try:
        if notes.get(names.GPU_COUNT):
            body["gpus"] = float(notes[names.GPU_COUNT])
        if notes.get(names.GPU_MEMORY):
            raw = notes[names.GPU_MEMORY]
            body["gpu_memory"] = f"{int(raw)}Mi" if raw.isdigit() else f"{parse_memory_mib(raw)}Mi"
        if notes.get(names.GPU_COMPUTE):
            body["gpu_compute"] = float(notes[names.GPU_COMPUTE])
    except ValueError as exc:
        raise GangError(
            f"{names.GPU_COUNT} takes an integer, {names.GPU_MEMORY} MiB or a quantity like 20Gi, "
            f"{names.GPU_COMPUTE} a percent 1-100: {exc}"
        ) from None
    if ("gpu_memory" in body or "gpu_compute" in body) and body.get("gpus") == 1:
        body.pop("gpus")  # "1 GPU, this much of it" is a slice
    limits = ((pod["spec"].get("containers") or [{}])[0].get("resources") or {}).get("limits") or {}
    if not body and limits.get("nvidia.com/gpu"):
        body["gpus"] = int(limits["nvidia.com/gpu"])
    try:
        return Resources.model_validate(body)
    except ValueError as exc:
        raise GangError(f"the pod's Tessera annotations are invalid: {exc}") from None


def _job_name(gang: Gang) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", f"{gang.namespace}-{gang.name}".lower()).strip("-")[:50].strip("-")
    return f"{base}-{hashlib.sha256(gang.key.encode()).hexdigest()[:6]}"


def _ext_label(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


class SecondaryScheduler:
    def __init__(
        self, db: Database, kube: Kube, changed: threading.Event | None = None, workers: int = 16
    ) -> None:
        self.db = db
        self.kube = kube
        self.pods = Informer(
            kube,
            "/api/v1/pods",
            label_selector=f"{names.MANAGED_BY}!={names.MANAGED_BY_VALUE}",
            field_selector=f"spec.schedulerName={names.SCHEDULER_NAME}",
            changed=changed,
        )
        self.jobs = JobCache(db, frozenset({JobState.PENDING.value} | {s.value for s in RUN_STATES}))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-bind")
        self._bound: set[str] = set()  # pod uid + attempt bound
        self._reported: dict[str, tuple[str, int | None]] = {}
        self._complained: set[str] = set()

    def start(self) -> SecondaryScheduler:
        self.pods.start()
        return self

    def stop(self) -> None:
        self.pods.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def step(self) -> None:
        if not self.pods.synced.is_set():
            return
        all_pods = [p for p in self.pods.snapshot() if not p["metadata"].get("deletionTimestamp")]
        _, external = self.jobs.live()
        live = {j.spec.labels[names.EXTERNAL]: j for j in external}
        by_key: dict[str, list[Obj]] = {}
        for pod in all_pods:
            group, _ = gang_of(pod)
            by_key.setdefault(f"{pod['metadata']['namespace']}/{group}", []).append(pod)
        binds: list[tuple[Obj, TaskLaunch, str]] = []
        reports: dict[str, list[TaskReport]] = {}
        for key, members in by_key.items():
            job = live.get(_ext_label(key))
            if job is None:
                self._admit(key, members)
            else:
                self._follow(job, members, binds, reports)
        for f in [self._pool.submit(self._bind, pod, launch, node) for pod, launch, node in binds]:
            f.result()
        for node, batch in reports.items():
            apply_reports(self.db, node, batch)
        labels = {_ext_label(k) for k in by_key}
        for label, job in live.items():  # a gang whose pods are all gone: its job is cancelled
            if label not in labels:
                with self.db.write() as tx:
                    row = tx.session.get(JobRow, job.id)
                    if row is not None and not JobState(row.state).terminal:
                        apply_transition(tx, row, JobState.CANCELLED, message="its pods were deleted")

    # admission ------------------------------------------------------------------------------

    def _admit(self, key: str, members: list[Obj]) -> None:
        waiting = [p for p in members if not p["spec"].get("nodeName")]
        if not waiting:
            return
        namespace, group = key.split("/", 1)
        _, minimum = gang_of(waiting[0])
        try:
            need = int(minimum) if minimum else self._podgroup_min(namespace, group) or len(waiting)
            resources = resources_of(waiting[0])
        except (GangError, ValueError) as exc:
            if key not in self._complained:
                self._complained.add(key)
                log.warning("pods of gang %s cannot be scheduled by Tessera: %s", key, exc)
            return
        if len(waiting) < need:
            return  # the gang is not all there yet (its controller is still creating pods)
        gang = Gang(key, namespace, group, need, sorted(waiting, key=lambda p: p["metadata"]["name"]))
        if self._ran_already(gang):
            return
        self._create_job(gang, resources)

    def _ran_already(self, gang: Gang) -> bool:
        """A finished (or cancelled) job stands for these very pods: do not queue them again. Pods
        created after it was (a controller's new generation) are a new gang."""
        newest = max(p["metadata"].get("creationTimestamp", "") for p in gang.pods)
        with self.db.read() as session:
            created = session.execute(
                select(JobRow.created_at)
                .where(JobRow.name == _job_name(gang))
                .order_by(JobRow.created_at.desc())
            ).first()
        if created is None or not newest:
            return False
        born = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        stamp = created[0] if created[0].tzinfo else created[0].replace(tzinfo=UTC)
        return born <= stamp

    def _podgroup_min(self, namespace: str, group: str) -> int | None:
        """minMember of a coscheduling or Volcano PodGroup object, where those CRDs exist."""
        for path in (
            f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{namespace}/podgroups/{group}",
            f"/apis/scheduling.volcano.sh/v1beta1/namespaces/{namespace}/podgroups/{group}",
        ):
            try:
                spec = self.kube.get(path).get("spec") or {}
                if spec.get("minMember"):
                    return int(spec["minMember"])
            except KubeError:
                continue
        return None

    def _create_job(self, gang: Gang, resources: Resources) -> None:
        notes = gang.pods[0]["metadata"].get("annotations") or {}
        with self.db.write() as tx:
            session = tx.session
            project_name = notes.get(names.PROJECT, "default")
            project = session.execute(
                select(ProjectRow).where(ProjectRow.name == project_name)
            ).scalar_one_or_none()
            if project is None:
                log.warning("gang %s names project %r, which does not exist", gang.key, project_name)
                return
            user = session.execute(select(UserRow).where(UserRow.name == SCHEDULER_USER)).scalar_one_or_none()
            if user is None:
                user = UserRow(name=SCHEDULER_USER)
                session.add(user)
                session.flush()
            queue = notes.get(names.QUEUE) or project.default_queue
            spec = JobSpec(
                name=_job_name(gang),
                project=project.name,
                queue=queue,
                groups=[
                    TaskGroupSpec(
                        name=GROUP,
                        replicas=len(gang.pods),
                        min_available=gang.min_available,
                        command=["(pods created in Kubernetes)"],
                        image=(gang.pods[0]["spec"].get("containers") or [{}])[0].get("image"),
                        resources=resources,
                    )
                ],
                priority=int(notes.get(names.PRIORITY, 50)),
                labels={names.EXTERNAL: _ext_label(gang.key), "kubernetes.namespace": gang.namespace},
            )
            now = utcnow()
            status = JobStatus(
                state=JobState.PENDING, pending_reason=pending.WAITING_FOR_SCHEDULER, submitted_at=now
            )
            row = JobRow(
                name=spec.name,
                live_name=spec.name,
                project_id=project.id,
                queue=queue,
                owner_id=user.id,
                state=JobState.PENDING.value,
                priority=spec.priority,
                spec=spec.model_dump(mode="json"),
                status=status.model_dump(mode="json"),
                revision=tx.revision,
            )
            session.add(row)
            session.flush()
            for i in range(len(gang.pods)):
                session.add(
                    TaskRow(
                        job_id=row.id,
                        group_name=GROUP,
                        index=i,
                        state=TaskState.PENDING.value,
                        revision=tx.revision,
                    )
                )
            put(tx, "job", row, lambda r: render_job(session, r))
        log.info(
            "gang %s (%d pods, min %d) queued as job %s",
            gang.key,
            len(gang.pods),
            gang.min_available,
            spec.name,
        )

    # bound jobs -----------------------------------------------------------------------------

    def _follow(
        self,
        job: Job,
        members: list[Obj],
        binds: list[tuple[Obj, TaskLaunch, str]],
        reports: dict[str, list[TaskReport]],
    ) -> None:
        ordered = sorted(members, key=lambda p: p["metadata"]["name"])
        if job.status.state is JobState.PENDING:
            # preempted (or requeued) after binding: its bound pods go, as with the default scheduler
            for pod in ordered:
                if pod["spec"].get("nodeName") and pod["metadata"].get("labels", {}).get(names.JOB) == str(
                    job.id
                ):
                    self._delete(pod)
            return
        for node in sorted({t.node for t in job.tasks if t.node}):
            for launch in launches_for(job, node):
                if launch.index >= len(ordered):
                    continue
                pod = ordered[launch.index]
                sig = f"{pod['metadata']['uid']}/{launch.attempt}"
                if sig not in self._bound and not pod["spec"].get("nodeName"):
                    self._bound.add(sig)
                    binds.append((pod, launch, node))
                    continue
                report = pods.task_report(pod, launch.task_id, launch.attempt)
                if report is None or not pod["spec"].get("nodeName"):
                    continue
                key = (report.state.value, report.exit_code)
                if self._reported.get(sig) != key:
                    self._reported[sig] = key
                    reports.setdefault(node, []).append(report)

    def _bind(self, pod: Obj, launch: TaskLaunch, node: str) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        patch = {
            "metadata": {
                "labels": {
                    names.JOB: str(launch.job_id),
                    names.TASK: str(launch.task_id),
                    names.ATTEMPT: str(launch.attempt),
                },
                "annotations": {
                    names.BINDING: pods.binding_annotation(node, launch),
                    names.ALLOCATION: names.ALLOCATING if launch.slices else names.ALLOCATED,
                    names.BOUND_AT: f"{utcnow().timestamp():.6f}",
                },
            }
        }
        try:
            self.kube.merge_patch(path, patch)
            self.kube.bind(meta["namespace"], meta["name"], node)
            log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], node)
        except KubeError as exc:
            self._bound.discard(f"{meta['uid']}/{launch.attempt}")  # the next pass tries again
            log.warning("cannot bind pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    def _delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
        except KubeError as exc:
            if not exc.not_found:
                log.warning("cannot delete pod %s/%s: %s", meta["namespace"], meta["name"], exc)
