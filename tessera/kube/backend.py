"""The Kubernetes backend: the control plane runs bound tasks as Pods it binds itself.

Each pass compares what should run (every live job's launches, as a node agent computes them) with
the pods Tessera owns (an informer's cache), then:

* creates a missing task's pod (after its job's owner ConfigMap and, for multi-task and elastic jobs,
  a headless Service naming rank 0) and binds it to the chosen node through the Binding API;
* deletes pods whose task should no longer run (cancelled, preempted, a new attempt);
* turns pods' statuses into task reports, fed to the same code as node agents' reports;
* removes the owner object of a deleted job, so the garbage collector removes its pods;
* keeps GPU nodes registered and alive from their Node objects (nodes.py).

Pods created by others with ``schedulerName: tessera`` are handled by secondary.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from tessera.api.jobs import Job, TaskReport, TaskState
from tessera.jobs.launch import TaskLaunch, launches_for
from tessera.kube import names, pods
from tessera.kube.client import Kube, KubeError, Obj, pod_path
from tessera.kube.informer import Informer
from tessera.kube.jobcache import JobCache
from tessera.kube.nodes import NodeSync
from tessera.platform.services.execution import apply_node_reports
from tessera.platform.store.db import Database
from tessera.platform.store.rows import JobRow

log = logging.getLogger(__name__)
MANAGED = f"{names.MANAGED_BY}={names.MANAGED_BY_VALUE}"
CREATE_GRACE_S = 30.0
_FINISHED = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
)  # a pod created this recently but not yet in the cache is not "vanished"


@dataclass(frozen=True)
class Desired:
    launch: TaskLaunch
    node: str
    job: Job
    rank0: bool


class KubeBackend:
    """One instance per control plane (leader); ``step()`` is one reconcile pass."""

    def __init__(
        self,
        db: Database,
        kube: Kube,
        namespace: str,
        *,
        image: str,
        cache_dir: str = "/var/lib/tessera/cache",
        heartbeat_every: float = 10.0,
        workers: int = 16,
        delete_grace: int = 10,
    ) -> None:
        self.db = db
        self.kube = kube
        self.namespace = namespace
        self.image = image
        self.cache_dir = cache_dir
        self.delete_grace = delete_grace
        self.changed = threading.Event()
        self.pods = Informer(
            kube, pod_path(namespace), label_selector=MANAGED, changed=self.changed, on_event=self._on_pod
        )
        self._gone: deque[Obj] = deque()  # pods deleted since the last pass
        self.nodes = Informer(kube, "/api/v1/nodes", changed=self.changed)
        self.node_sync = NodeSync(db, heartbeat_every)
        self.jobs = JobCache(db)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._owners: dict[uuid.UUID, str] = {}  # job -> its owner ConfigMap's uid
        self._services: set[uuid.UUID] = set()
        self._created: dict[str, float] = {}  # pod name -> when created (until the cache shows it)
        self._seen: set[str] = set()  # pod names the cache has shown
        self._deleting: dict[str, float] = {}
        self._reported: dict[str, tuple[str, int | None, str | None]] = {}
        self._failed_start: dict[str, TaskReport] = {}
        self._last_gc = 0.0

    def _on_pod(self, kind: str, pod: Obj) -> None:
        if kind == "DELETED":
            self._gone.append(pod)

    def start(self) -> KubeBackend:
        self.pods.start()
        self.nodes.start()
        return self

    def stop(self) -> None:
        self.pods.stop()
        self.nodes.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # the pass -----------------------------------------------------------------------------------

    def step(self) -> None:
        if not (self.pods.synced.is_set() and self.nodes.synced.is_set()):
            return
        self.changed.clear()
        self.node_sync.sync(self.nodes.snapshot())
        desired = self._desired()
        existing = {p["metadata"]["name"]: p for p in self.pods.snapshot()}
        self._seen.update(existing)
        self._create_missing(desired, existing)
        self._delete_unwanted(desired, existing)
        self._report(desired, existing)
        self._seen &= set(desired) | set(existing)
        if time.monotonic() - self._last_gc > 5.0:
            self._last_gc = time.monotonic()
            with self.db.read() as session:
                self._collect_owners(set(session.execute(select(JobRow.id)).scalars()))

    def _desired(self) -> dict[str, Desired]:
        out: dict[str, Desired] = {}
        jobs, _ = self.jobs.live()
        for job in jobs:
            finished = {t.id: t.state in _FINISHED for t in job.tasks}
            host = self._master_host(job)
            nodes = sorted({t.node for t in job.tasks if t.node})
            for node in nodes:
                for launch in launches_for(job, node, master_host=host):
                    if finished.get(launch.task_id):
                        continue  # its pod ran to the end (and may be gone): never start it again
                    rank0 = launch.env.get("RANK") == "0"
                    out[pods.pod_name(launch)] = Desired(launch, node, job, rank0)
        return out

    def _master_host(self, job: Job) -> str | None:
        if len(job.tasks) <= 1 and job.spec.elastic is None:
            return None
        return f"{pods.service_name(job.name, job.id)}.{self.namespace}.svc"

    # create -------------------------------------------------------------------------------------

    def _create_missing(self, desired: dict[str, Desired], existing: dict[str, Obj]) -> None:
        """Create the pods of tasks that should run and have none; bind every desired pod that is
        not bound yet (including one whose bind failed after its create, or before a restart)."""
        now = time.monotonic()
        todo = [
            d
            for name, d in desired.items()
            if (name not in existing or not existing[name]["spec"].get("nodeName"))
            and not (existing.get(name) or {}).get("metadata", {}).get("deletionTimestamp")
            and name not in self._created
            and name not in self._failed_start
            and (name in existing or name not in self._seen)
        ]
        for d in todo:
            self._created[pods.pod_name(d.launch)] = now
        # one node's binds in order, one thread per node: the device plugin's Allocate matches the
        # oldest pod bound to its node, so bind order must be the order of their bound-at stamps
        per_node: dict[str, list[Desired]] = {}
        for d in todo:
            per_node.setdefault(d.node, []).append(d)
        futures = [self._pool.submit(self._start_on, batch, existing) for batch in per_node.values()]
        for f in futures:
            f.result()
        for name, at in list(self._created.items()):
            if (
                name in existing and existing[name]["spec"].get("nodeName")
            ) or now - at > 10 * CREATE_GRACE_S:
                self._created.pop(name, None)

    def _start_on(self, batch: list[Desired], existing: dict[str, Obj]) -> None:
        for d in batch:
            self._create_one(d, pods.pod_name(d.launch) in existing)

    def _create_one(self, d: Desired, exists: bool) -> None:
        name = pods.pod_name(d.launch)
        try:
            owner = self._owner(d.job)
            if self._master_host(d.job) is not None and d.job.id not in self._services:
                svc = pods.master_service(d.job.id, d.job.name, self.namespace, owner)
                self._ignore_conflict(
                    lambda: self.kube.create(f"/api/v1/namespaces/{self.namespace}/services", svc)
                )
                self._services.add(d.job.id)
            if not exists:
                group = next(g for g in d.job.spec.groups if g.name == d.launch.group)
                pod = pods.build_pod(
                    d.launch,
                    d.node,
                    self.namespace,
                    owner,
                    labels=d.job.spec.labels,
                    image=self.image,
                    rank0=d.rank0,
                    cache_dir=self.cache_dir,
                    resources=group.resources,
                )
                try:
                    self.kube.create(pod_path(self.namespace), pod)
                except KubeError as exc:
                    if not exc.conflict:
                        raise
            # stamped now, in bind order, and written with the bind itself
            self.kube.bind(self.namespace, name, d.node, {names.BOUND_AT: f"{time.time():.6f}"})
            log.info("pod %s bound to %s", name, d.node)
        except KubeError as exc:
            if exc.conflict and "already assigned" in exc.message:
                return  # bound by an earlier pass
            log.warning("cannot start pod %s: %s", name, exc)
            permanent = 400 <= exc.status < 500 and exc.status not in (403, 409, 429)
            if permanent:  # invalid: the task cannot start (a quota refusal, 403, is tried again)
                self._failed_start[name] = TaskReport(
                    task_id=d.launch.task_id,
                    attempt=d.launch.attempt,
                    state=TaskState.FAILED,
                    exit_code=128,
                    start_error=f"the API server refused the pod: {exc.message}"[:1000],
                )
            else:
                self._created.pop(name, None)  # try again next pass
        except Exception:
            log.exception("cannot start pod %s", name)
            self._created.pop(name, None)

    def _ignore_conflict(self, call: object) -> None:
        try:
            call()  # type: ignore[operator]
        except KubeError as exc:
            if not exc.conflict:
                raise

    def _owner(self, job: Job) -> str:
        uid = self._owners.get(job.id)
        if uid:
            return uid
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        try:
            obj = self.kube.create(path, pods.owner_configmap(job.id, job.name, job.project, self.namespace))
        except KubeError as exc:
            if not exc.conflict:
                raise
            obj = self.kube.get(f"{path}/{pods.owner_name(job.id)}")
        uid = str(obj["metadata"]["uid"])
        self._owners[job.id] = uid
        return uid

    # delete -------------------------------------------------------------------------------------

    def _delete_unwanted(self, desired: dict[str, Desired], existing: dict[str, Obj]) -> None:
        now = time.monotonic()
        doomed = []
        for name, pod in existing.items():
            if name in desired or pod["metadata"].get("deletionTimestamp"):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue  # finished pods stay (their logs) until their job is deleted
            if now - self._deleting.get(name, 0.0) < 10.0:
                continue
            self._deleting[name] = now
            doomed.append(name)
        for f in [self._pool.submit(self._delete_pod, n) for n in doomed]:
            f.result()

    def _delete_pod(self, name: str) -> None:
        try:
            self.kube.delete(pod_path(self.namespace, name), grace=self.delete_grace)
            log.info("deleted pod %s (its task should not run)", name)
        except KubeError as exc:
            if not exc.not_found:
                log.warning("cannot delete pod %s: %s", name, exc)

    def _collect_owners(self, jobs: set[uuid.UUID]) -> None:
        """A deleted job's owner ConfigMap goes; the garbage collector removes its pods and Service."""
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        for cm in self.kube.list(path, MANAGED).get("items") or []:
            job = (cm["metadata"].get("labels") or {}).get(names.JOB)
            try:
                job_id = uuid.UUID(job or "")
            except ValueError:
                continue
            if job_id not in jobs:
                try:
                    self.kube.delete(f"{path}/{cm['metadata']['name']}", propagation="Background")
                    log.info("job %s is deleted: removed its owner object (and so its pods)", job_id)
                except KubeError as exc:
                    if not exc.not_found:
                        raise
                self._owners.pop(job_id, None)
                self._services.discard(job_id)

    # report -------------------------------------------------------------------------------------

    def _report(self, desired: dict[str, Desired], existing: dict[str, Obj]) -> None:
        by_node: dict[str, list[TaskReport]] = {}
        keys: dict[str, list[tuple[str, tuple[str, int | None, str | None]]]] = {}
        for name, pod in existing.items():
            labels = pod["metadata"].get("labels") or {}
            try:
                task_id, attempt = uuid.UUID(labels[names.TASK]), int(labels[names.ATTEMPT])
            except (KeyError, ValueError):
                continue
            node = (pod.get("spec") or {}).get("nodeName")
            report = pods.task_report(pod, task_id, attempt)
            if report is None or not node:
                continue
            self._queue(by_node, keys, node, name, report)
        later = []
        while self._gone:  # a deleted pod's task attempt is over: its slices stop counting
            pod = self._gone.popleft()
            name, labels = pod["metadata"]["name"], pod["metadata"].get("labels") or {}
            node = (pod.get("spec") or {}).get("nodeName")
            if name in existing:
                later.append(pod)  # deleted after this pass's snapshot: the next pass sees it gone
                continue
            if name in desired or not node or names.TASK not in labels:
                continue  # still wanted: reported as vanished below, once its grace is over
            try:
                report = pods.gone_report(pod, uuid.UUID(labels[names.TASK]), int(labels[names.ATTEMPT]))
            except (KeyError, ValueError):
                continue
            self._queue(by_node, keys, node, name, report)
        self._gone.extend(later)
        now = time.monotonic()
        for name, d in desired.items():
            if name in existing:
                continue
            if name in self._failed_start:
                self._queue(by_node, keys, d.node, name, self._failed_start[name])
            elif name in self._seen and now - self._created.get(name, 0.0) > CREATE_GRACE_S:
                self._queue(
                    by_node, keys, d.node, name, pods.vanished_report(d.launch.task_id, d.launch.attempt)
                )
        if by_node:
            apply_node_reports(self.db, by_node)
        for node in by_node:
            for name, sig in keys[node]:
                self._reported[name] = sig

    def _queue(
        self,
        by_node: dict[str, list[TaskReport]],
        keys: dict[str, list[tuple[str, tuple[str, int | None, str | None]]]],
        node: str,
        name: str,
        report: TaskReport,
    ) -> None:
        sig = (report.state.value, report.exit_code, report.reason.value if report.reason else None)
        if self._reported.get(name) == sig:
            return
        by_node.setdefault(node, []).append(report)
        keys.setdefault(node, []).append((name, sig))
