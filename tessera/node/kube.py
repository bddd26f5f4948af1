"""The node agent's Kubernetes mode (`tessera node --kubernetes`, as the Helm chart's DaemonSet runs it).

The kubelet starts and stops the tasks (pods) and the control plane reads their statuses, so this
agent never launches, stops or reports tasks. It still registers the node (its NVML or simulated
inventory; an agent's registration wins over the Node object's, see kube/nodes.py), heartbeats with
the GPUs' usage, follows its assignments, keeps the dataset cache that pods mount by hostPath
(``<cache dir>/data/<dataset id>``) and serves Tessera's device plugin, whose Allocate matches the
node's pods from an informer of them.

Enforcement goes by pod: an informer of the pods bound to this node gives each assigned task
attempt's pod (labels ``tessera.io/task`` and ``tessera.io/attempt``), its uid gives the pod's cgroup
(`find_pod_cgroup`), and every slice of a running pod is enforced with that cgroup: its GPU
processes are attributed by cgroup, and a slice over its memory is stopped by signalling every
process in the pod's cgroup. The one report this agent sends is that: the task FAILED with reason
SliceOOM, so the job fails with SliceOOM, whatever exit status the kubelet sees afterwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from tessera.api.jobs import TaskState
from tessera.gpushare.cgroups import CGROUP_ROOT, find_pod_cgroup
from tessera.jobs.launch import TaskLaunch, launches_for
from tessera.kube import names
from tessera.kube.client import Kube, KubeError, Obj
from tessera.kube.deviceplugin.apisource import ApiPodSource, node_pod_informer
from tessera.kube.deviceplugin.plugin import DEVICE_PLUGIN_DIR, DevicePlugin
from tessera.node.agent import Agent, AgentConfig
from tessera.node.datasets import DataManager
from tessera.node.enforcement import NodeEnforcement, node_ended

log = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path("/var/lib/tessera/cache")
LABELS_EVERY_S = 60.0  # how often the Node object's labels are read again (a change re-registers)
LABELS_RETRY_S = 5.0
CGROUP_RETRY_S = 1.0
DATA_RETRY_S = 30.0  # a dataset a pod mounts that could not be cached is tried again after this


@dataclass(frozen=True)
class KubeOptions:
    """Where the kubelet's node keeps what the agent shares with it (hostPaths in the DaemonSet)."""

    cache_dir: Path = DEFAULT_CACHE_DIR
    device_plugin_dir: Path = DEVICE_PLUGIN_DIR
    cgroup_root: Path = CGROUP_ROOT


class PodCache(Protocol):
    """The pods bound to this node, kept current (`tessera.kube.informer.Informer`)."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def snapshot(self) -> list[Obj]: ...


def pod_key(pod: Obj) -> str | None:
    """The task attempt a Tessera pod runs (``<task id>-a<attempt>``, as the agent names them)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    task, attempt = labels.get(names.TASK), labels.get(names.ATTEMPT)
    if not task or attempt is None:
        return None
    try:
        return f"{uuid.UUID(task)}-a{int(attempt)}"
    except ValueError:
        return None


class KubeAgent(Agent):
    """`Agent` for a node whose tasks the kubelet runs (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        options: KubeOptions,
        kube: Kube | None,
        *,
        pods: PodCache | None = None,
        find_cgroup: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(config)
        self.options = options
        self.kube = kube
        self.enforcement = NodeEnforcement(
            config.name,
            config.device,
            self.state_dir,
            config.enforcement,
            self._event,
            cgroup_root=options.cgroup_root,
        )
        if pods is None:
            if kube is None:
                raise ValueError("the Kubernetes mode needs the API server or a pod cache")
            pods = node_pod_informer(kube, config.name, changed=self.changed)
        self.pods = pods
        self.find_cgroup = find_cgroup or (lambda uid: find_pod_cgroup(uid, options.cgroup_root))
        self.plugin: DevicePlugin | None = None
        self._cgroups: dict[str, str] = {}  # pod uid -> its cgroup, once found
        self._looked: dict[str, float] = {}  # pod uid -> when its cgroup was last looked for in vain
        self._data_tried: dict[tuple[str, str], float] = {}  # (task key, dataset id) -> when
        self._known_labels = dict(config.labels)  # as last registered
        self._labels_read_at = float("-inf")

    # lifecycle ----------------------------------------------------------------------------------

    def _open_data(self) -> DataManager:
        # where the pods' hostPath mounts look, without the memory tier (its links point into this
        # container's /dev/shm, which the pods do not share)
        return DataManager(
            self.http,
            self.config.name,
            self.options.cache_dir,
            self.config.cache_capacity_bytes,
            memory_tier=False,
        )

    def _start_services(self) -> None:
        self.pods.start()
        if self.kube is None:
            return
        gpus = [g.uuid for g in self.config.inventory.gpus]
        self.plugin = DevicePlugin(
            self.config.name,
            gpus,
            ApiPodSource(self.kube, self.pods),
            plugin_dir=self.options.device_plugin_dir,
        )
        self.plugin.start()
        log.info("device plugin for %d GPU(s) in %s", len(gpus), self.options.device_plugin_dir)

    def _stop_services(self) -> None:
        if self.plugin is not None:
            self.plugin.stop()
        self.pods.stop()
        if self.kube is not None:
            self.kube.close()

    # the node's labels --------------------------------------------------------------------------

    def _labels(self) -> dict[str, str]:
        """The Node object's labels (as the control plane keeps them for nodes it registers itself)
        and --label's; the last known ones if the API server cannot be asked now."""
        labels = self._node_labels()
        if labels is not None:
            self._known_labels = labels
        return dict(self._known_labels)

    def _node_labels(self) -> dict[str, str] | None:
        if self.kube is None:
            return dict(self.config.labels)
        # the control plane's own reading of a Node's labels (which are the kubelet's bookkeeping)
        from tessera.kube.nodes import node_labels

        self._labels_read_at = time.monotonic()
        try:
            node = self.kube.get(f"/api/v1/nodes/{self.config.name}")
        except (KubeError, httpx.HTTPError) as exc:
            log.warning("cannot read Node %s for its labels (%s); trying again soon", self.config.name, exc)
            self._labels_read_at -= LABELS_EVERY_S - LABELS_RETRY_S
            return None
        return {**node_labels(node), **self.config.labels}

    def _refresh_labels(self) -> None:
        """Register again when the Node's labels changed (node selectors match them)."""
        if self.kube is None or time.monotonic() - self._labels_read_at < LABELS_EVERY_S:
            return
        labels = self._node_labels()
        if labels is not None and labels != self._known_labels:
            log.info("Node %s has new labels: registering again", self.config.name)
            known = self._known_labels
            try:
                self._register()  # reads them again
            except httpx.HTTPError as exc:
                log.info("registering again failed (%s); next time", exc)
                self._known_labels = known

    # reconcile ----------------------------------------------------------------------------------

    def running_pods(self) -> dict[str, str]:
        """The uid of each running pod on this node, by the task attempt it runs."""
        out = {}
        for pod in self.pods.snapshot():
            meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
            key = pod_key(pod)
            if key is None or spec.get("nodeName") != self.config.name or not meta.get("uid"):
                continue
            if status.get("phase") == "Running":
                out[key] = str(meta["uid"])
        return out

    def reconcile(self) -> None:
        """Enforce the slices of the running pods, cache what they mount, report slices stopped."""
        assert self.feed is not None
        jobs = self.feed.snapshot()  # one snapshot: a job the watch drops meanwhile is not half seen
        desired = {t.key: t for job in jobs.values() for t in launches_for(job, self.config.name)}
        running = self.running_pods()
        cgroups = {
            key: cgroup for key, uid in running.items() if key in desired and (cgroup := self._cgroup(uid))
        }
        alive = set(running.values())
        self._cgroups = {u: c for u, c in self._cgroups.items() if u in alive}
        self._looked = {u: t for u, t in self._looked.items() if u in alive}
        self.enforcement.set_pod_slices(desired.values(), jobs, self.jobs_dir, cgroups)
        if self.data is not None:
            self.data.cache.set_pins(
                {str(m.dataset_id) for t in desired.values() for m in t.data if m.dataset_id}
            )
            self._cache_mounts(desired)
        self._gpu_health()
        self._refresh_labels()
        self._send(self._stopped_reports())
        if self.feed.listed:
            self._clean({d.key: d for d in self.task_dirs()})

    def _cgroup(self, uid: str) -> str | None:
        """The pod's cgroup; one the kubelet has not made yet is looked for again a second later."""
        found = self._cgroups.get(uid)
        now = time.monotonic()
        if found is None and now - self._looked.get(uid, float("-inf")) >= CGROUP_RETRY_S:
            found = self.find_cgroup(uid)
            if found is None:
                self._looked[uid] = now
            else:
                self._cgroups[uid] = found
        return found

    def _stopped_reports(self) -> list[tuple[str, dict[str, Any]]]:
        """FAILED (SliceOOM) for each task attempt the watchdog stopped, until acknowledged."""
        reports = []
        for task_dir in self.task_dirs():
            if task_dir.key in self.final:
                continue
            ended = node_ended(task_dir.path)
            if ended is None:
                continue
            at = ended.get("at")
            body = {
                "task_id": str(task_dir.task_id),
                "attempt": task_dir.attempt,
                "state": TaskState.FAILED.value,
                "exit_code": None,
                "reason": ended["reason"],
                "message": str(ended["message"])[:1000],
                "finished_at": datetime.fromtimestamp(at, UTC).isoformat()
                if isinstance(at, int | float)
                else None,
            }
            if self.reported.get(task_dir.key) != (body["state"], None):
                reports.append((task_dir.key, body))
        return reports

    def _cache_mounts(self, desired: dict[str, TaskLaunch]) -> None:
        """Cache the datasets the node's tasks mount (the kubelet does not wait for them)."""
        now = time.monotonic()
        wanted = set()
        for launch in desired.values():
            for mount in launch.data:
                if mount.dataset_id is None or mount.mode == "stream":
                    continue
                item = (launch.key, str(mount.dataset_id))
                wanted.add(item)
                if now - self._data_tried.get(item, float("-inf")) >= DATA_RETRY_S:
                    self._data_tried[item] = float("inf")  # in flight; done for good once cached
                    self._pool.submit(self._cache_one, item, mount.dataset)
        for item in [k for k in self._data_tried if k not in wanted]:
            del self._data_tried[item]  # in place: a caching thread may write its outcome meanwhile

    def _cache_one(self, item: tuple[str, str], name: str) -> None:
        assert self.data is not None
        try:
            self.data.ensure(item[1], name)
        except Exception as exc:
            log.warning("dataset %s for task %s is not cached yet: %s", name, item[0], exc)
            if item in self._data_tried:
                self._data_tried[item] = time.monotonic()

    def _gpu_health(self) -> None:
        """The device plugin tells the kubelet which GPUs cannot be read (no new pods there)."""
        if self.plugin is None:
            return
        for gpu in self.enforcement.enforcer.snapshot.gpus:
            if gpu.info.uuid in self.plugin.gpus:
                self.plugin.set_health(gpu.info.uuid, not gpu.lost)
