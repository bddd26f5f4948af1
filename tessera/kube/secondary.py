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
import time
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
from tessera.platform.services.execution import apply_node_reports
from tessera.platform.services.jobs import apply_transition, render_job
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import JobRow, ProjectRow, TaskRow, UserRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
SCHEDULER_USER = "kube-scheduler"
PODGROUP_APIS = {
    "coscheduling": "/apis/scheduling.x-k8s.io/v1alpha1",
    "volcano": "/apis/scheduling.volcano.sh/v1beta1",
}
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


def gang_of(pod: Obj) -> tuple[str, str | None, str | None]:
    """(group name, min-available as written, which spelling named the group: "tessera",
    "coscheduling", "volcano", or None for a pod on its own)."""
    meta = pod["metadata"]
    both = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    minimum = (
        both.get(names.GANG_MIN) or _first(both, names.COSCHEDULING_MIN) or _first(both, names.VOLCANO_MIN)
    )
    if both.get(names.GANG):
        return both[names.GANG], minimum, "tessera"
    group = _first(both, names.COSCHEDULING_LABELS)
    if group:
        return group, minimum, "coscheduling"
    group = _first(both, names.VOLCANO_GROUP)
    if group:
        return group, minimum, "volcano"
    return f"pod-{meta['name']}", minimum, None


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
    requested = 0
    for container in pod["spec"].get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        try:
            requested += int(limits.get(names.SLICE_RESOURCE, 0))
        except ValueError:
            raise GangError(f"{names.SLICE_RESOURCE} must be an integer") from None
    if not body and requested:
        body["gpus"] = requested  # whole GPUs, one slice each
    try:
        resources = Resources.model_validate(body)
    except ValueError as exc:
        raise GangError(f"the pod's Tessera annotations are invalid: {exc}") from None
    # the kubelet calls Tessera's device plugin (which injects the bound GPU) only for pods that
    # request its resource: a GPU pod without it would see every GPU of its node
    if resources.gpu_count and requested != resources.gpu_count:
        raise GangError(
            f"the pod asks for {resources.gpu_count} GPU slice(s) but requests {requested} "
            f"{names.SLICE_RESOURCE}: set resources.limits[{names.SLICE_RESOURCE!r}] to {resources.gpu_count}"
        )
    return resources


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
        self._claims: dict[str, str] = {}  # pod uid -> the task it is being bound as
        self._reported: dict[str, tuple[str, int | None]] = {}
        self._complained: set[str] = set()
        self._crds: dict[str, tuple[bool, float]] = {}  # PodGroup API -> (served, when checked)
        self.timings: dict[str, float] = {}  # the last pass's phases (cumulative seconds)

    def start(self) -> SecondaryScheduler:
        self.pods.start()
        return self

    def stop(self) -> None:
        self.pods.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def step(self) -> None:
        if not self.pods.synced.is_set():
            return
        began = time.monotonic()
        self.timings = timings = {}
        all_pods = [p for p in self.pods.snapshot() if not p["metadata"].get("deletionTimestamp")]
        _, external = self.jobs.live()
        timings["jobs"] = time.monotonic() - began
        live = {j.spec.labels[names.EXTERNAL]: j for j in external}
        by_key: dict[str, list[Obj]] = {}
        for pod in all_pods:
            group, _, _ = gang_of(pod)
            by_key.setdefault(f"{pod['metadata']['namespace']}/{group}", []).append(pod)
        binds: list[tuple[Obj, TaskLaunch, str]] = []
        reports: dict[str, list[TaskReport]] = {}
        admit: list[tuple[Gang, Resources]] = []
        for key, members in by_key.items():
            job = live.get(_ext_label(key))
            if job is None:
                ready = self._admit(key, members)
                if ready is not None:
                    admit.append(ready)
            else:
                self._follow(job, members, binds, reports)
        if admit:
            self._create_jobs(admit)
        timings["admit"] = time.monotonic() - began
        timings["follow"] = time.monotonic() - began
        # one node's binds in order, one thread per node: the device plugin's Allocate matches the
        # oldest pod bound to its node, so bind order must be the order of their bound-at stamps
        per_node: dict[str, list[tuple[Obj, TaskLaunch, str]]] = {}
        for item in binds:
            per_node.setdefault(item[2], []).append(item)
        futures = [
            self._pool.submit(lambda b: [self._bind(*i) for i in b], batch) for batch in per_node.values()
        ]
        bound = [done for f in futures for done in f.result()]
        timings["bind"] = time.monotonic() - began
        # bookkeeping labels after every bind of the pass, not waited for: binding latency first
        for done in bound:
            if done is not None:
                self._pool.submit(self._label, done)
        if reports:
            apply_node_reports(self.db, reports)
        timings["report"] = time.monotonic() - began
        alive = {p["metadata"]["uid"] for p in all_pods}
        self._claims = {uid: task for uid, task in self._claims.items() if uid in alive}
        labels = {_ext_label(k) for k in by_key}
        orphans = [job.id for label, job in live.items() if label not in labels]
        if orphans:  # gangs whose pods are all gone: their jobs are cancelled (one transaction)
            with self.db.write() as tx:
                for job_id in orphans:
                    row = tx.session.get(JobRow, job_id)
                    if row is not None and not JobState(row.state).terminal:
                        apply_transition(tx, row, JobState.CANCELLED, message="its pods were deleted")

    # admission ------------------------------------------------------------------------------

    def _admit(self, key: str, members: list[Obj]) -> tuple[Gang, Resources] | None:
        """The gang, once min-available of its pods wait (else None: not all there yet, or bad)."""
        waiting = [p for p in members if not p["spec"].get("nodeName")]
        if not waiting:
            return None
        namespace, group = key.split("/", 1)
        _, minimum, spelling = gang_of(waiting[0])
        try:
            need = int(minimum) if minimum else None
            if need is None and spelling in ("coscheduling", "volcano"):
                need = self._podgroup_min(spelling, namespace, group)
            resources = resources_of(waiting[0])
            priority = (waiting[0]["metadata"].get("annotations") or {}).get(names.PRIORITY, "50")
            if not priority.isdigit() or not 0 <= int(priority) <= 1000:
                raise GangError(f"{names.PRIORITY} takes an integer 0-1000, got {priority!r}")
        except (GangError, ValueError) as exc:
            if key not in self._complained:
                self._complained.add(key)
                log.warning("pods of gang %s cannot be scheduled by Tessera: %s", key, exc)
            return None
        need = need or len(waiting)
        if len(waiting) < need:
            return None  # the gang is not all there yet (its controller is still creating pods)
        return Gang(
            key, namespace, group, need, sorted(waiting, key=lambda p: p["metadata"]["name"])
        ), resources

    @staticmethod
    def _ran_already(gang: Gang, created: datetime | None) -> bool:
        """A finished (or cancelled) job stands for these very pods: do not queue them again. Pods
        created after it was (a controller's new generation) are a new gang."""
        newest = max(p["metadata"].get("creationTimestamp", "") for p in gang.pods)
        if created is None or not newest:
            return False
        born = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        stamp = created if created.tzinfo else created.replace(tzinfo=UTC)
        return born <= stamp

    def _podgroup_min(self, spelling: str, namespace: str, group: str) -> int | None:
        """minMember of the gang's coscheduling or Volcano PodGroup object, where that CRD exists."""
        api = PODGROUP_APIS[spelling]
        now = time.monotonic()
        known = self._crds.get(api)
        if known is None or now - known[1] > 30:
            try:
                served = any(r.get("name") == "podgroups" for r in self.kube.get(api).get("resources") or [])
            except KubeError:
                served = False
            self._crds[api] = known = (served, now)
        if not known[0]:
            return None
        try:
            spec = self.kube.get(f"{api}/namespaces/{namespace}/podgroups/{group}").get("spec") or {}
        except KubeError:
            return None
        return int(spec["minMember"]) if spec.get("minMember") else None

    def _create_jobs(self, gangs: list[tuple[Gang, Resources]]) -> None:
        """Queue every newly complete gang as a job, in one transaction."""
        made = []
        with self.db.write() as tx:
            session = tx.session
            wanted = [_job_name(g) for g, _ in gangs]
            created: dict[str, datetime] = {}
            for name, at in session.execute(
                select(JobRow.name, JobRow.created_at).where(JobRow.name.in_(wanted))
            ):
                if name not in created or at > created[name]:
                    created[name] = at
            user = session.execute(select(UserRow).where(UserRow.name == SCHEDULER_USER)).scalar_one_or_none()
            if user is None:
                user = UserRow(name=SCHEDULER_USER)
                session.add(user)
                session.flush()
            projects = {p.name: p for p in session.execute(select(ProjectRow)).scalars()}
            for gang, resources in gangs:
                if self._ran_already(gang, created.get(_job_name(gang))):
                    continue
                notes = gang.pods[0]["metadata"].get("annotations") or {}
                project = projects.get(notes.get(names.PROJECT, "default"))
                if project is None:
                    if gang.key not in self._complained:
                        self._complained.add(gang.key)
                        log.warning(
                            "gang %s names project %r, which does not exist",
                            gang.key,
                            notes.get(names.PROJECT),
                        )
                    continue
                try:
                    self._insert(tx, gang, resources, project, user, notes)
                except ValueError as exc:  # the job its annotations describe is invalid (queue, ...)
                    if gang.key not in self._complained:
                        self._complained.add(gang.key)
                        log.warning("pods of gang %s cannot be scheduled by Tessera: %s", gang.key, exc)
                    continue
                made.append(gang)
        for gang in made:
            log.info("gang %s (%d pods, min %d) queued", gang.key, len(gang.pods), gang.min_available)

    def _insert(
        self,
        tx: Tx,
        gang: Gang,
        resources: Resources,
        project: ProjectRow,
        user: UserRow,
        notes: dict[str, str],
    ) -> None:
        session = tx.session
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
        # a pod belongs to the task its binding named; unbound pods take the tasks still without one
        by_task: dict[str, Obj] = {}
        free: list[Obj] = []
        for pod in ordered:
            task = (pod["metadata"].get("annotations") or {}).get(names.TASK)
            if task:
                by_task[task] = pod
            elif not pod["spec"].get("nodeName"):
                free.append(pod)
        for node in sorted({t.node for t in job.tasks if t.node}):
            for launch in launches_for(job, node):
                task = str(launch.task_id)
                mine = by_task.get(task) or next(
                    (p for p in free if self._claims.get(p["metadata"]["uid"]) == task), None
                )
                if mine is None:  # no pod yet: the first unclaimed one waiting becomes this task's
                    spare = next((p for p in free if p["metadata"]["uid"] not in self._claims), None)
                    if spare is not None:
                        self._claims[spare["metadata"]["uid"]] = task
                        binds.append((spare, launch, node))
                    continue
                pod = mine
                sig = f"{pod['metadata']['uid']}/{launch.attempt}"
                report = pods.task_report(pod, launch.task_id, launch.attempt)
                if report is None or not pod["spec"].get("nodeName"):
                    continue
                key = (report.state.value, report.exit_code)
                if self._reported.get(sig) != key:
                    self._reported[sig] = key
                    reports.setdefault(node, []).append(report)

    def _bind(self, pod: Obj, launch: TaskLaunch, node: str) -> tuple[Obj, dict[str, str]] | None:
        """Bind with the binding annotations in the same request. Returns what to label the pod with
        (its job, task and attempt: for log lookups and for finding a preempted job's pods)."""
        meta = pod["metadata"]
        notes = {
            names.TASK: str(launch.task_id),  # which task this pod is, written with the bind itself
            names.BINDING: pods.binding_annotation(node, launch),
            names.ALLOCATION: names.ALLOCATING if launch.slices else names.ALLOCATED,
            names.BOUND_AT: f"{utcnow().timestamp():.6f}",
        }
        labels = {
            names.JOB: str(launch.job_id),
            names.TASK: str(launch.task_id),
            names.ATTEMPT: str(launch.attempt),
        }
        try:
            self.kube.bind(meta["namespace"], meta["name"], node, notes)
            log.debug("bound pod %s/%s to %s", meta["namespace"], meta["name"], node)
            return pod, labels
        except KubeError as exc:
            if exc.conflict and "already assigned" in exc.message:
                return pod, labels
            self._claims.pop(meta["uid"], None)  # the next pass tries again
            log.warning("cannot bind pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            return None

    def _label(self, bound: tuple[Obj, dict[str, str]]) -> None:
        pod, labels = bound
        meta = pod["metadata"]
        try:
            self.kube.merge_patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"metadata": {"labels": labels}},
            )
        except KubeError as exc:
            log.warning("cannot label pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    def _delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
        except KubeError as exc:
            if not exc.not_found:
                log.warning("cannot delete pod %s/%s: %s", meta["namespace"], meta["name"], exc)
