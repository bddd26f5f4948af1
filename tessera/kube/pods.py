"""Pods for Tessera's tasks, and what a pod's status says about its task: pure functions.

A task attempt becomes one Pod in the jobs namespace. It names its job, task and attempt in labels,
carries its binding (the slices and env the device plugin injects) in annotations, requests one
``tessera.io/slice`` per GPU slice, is owned by its job's ConfigMap (deleting the job's owner object
lets the garbage collector remove every pod), and is bound by Tessera through the Binding API.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tessera.api.jobs import TaskReport, TaskState, TerminalReason
from tessera.api.resources import Resources
from tessera.jobs.launch import TaskLaunch
from tessera.kube import names

Obj = dict[str, Any]
DEFAULT_IMAGE = "ghcr.io/tessera-ai/tessera:0.1.0"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _dns(text: str, limit: int) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "x"


def pod_name(launch: TaskLaunch) -> str:
    """``<job>-<group>-<index>-<task id>-a<attempt>``: readable, unique (the task id), a DNS label."""
    job = _dns(launch.job_name, 24)
    return f"{job}-{_dns(launch.group, 12)}-{launch.index}-{launch.task_id.hex[:10]}-a{launch.attempt}"


def owner_name(job_id: uuid.UUID) -> str:
    return f"tessera-job-{job_id}"


def service_name(job_name: str, job_id: uuid.UUID) -> str:
    """The headless Service in front of a job's rank 0 (torch master, Ray head)."""
    return f"{_dns(job_name, 40)}-{job_id.hex[:8]}"


def owner_configmap(job_id: uuid.UUID, job_name: str, project: str, namespace: str) -> Obj:
    """The object every pod of a job is owned by: delete it and the garbage collector does the rest."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": owner_name(job_id),
            "namespace": namespace,
            "labels": {names.MANAGED_BY: names.MANAGED_BY_VALUE, names.JOB: str(job_id)},
        },
        "data": {"job": job_name, "project": project},
    }


def master_service(job_id: uuid.UUID, job_name: str, namespace: str, owner_uid: str) -> Obj:
    """A headless Service resolving to the job's rank-0 pod, so MASTER_ADDR (and a Ray head's address)
    is a stable name known before the pod has an IP."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job_name, job_id),
            "namespace": namespace,
            "labels": {names.MANAGED_BY: names.MANAGED_BY_VALUE, names.JOB: str(job_id)},
            "ownerReferences": [_owner_ref(job_id, owner_uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.JOB: str(job_id), names.RANK0: "true"},
        },
    }


def _owner_ref(job_id: uuid.UUID, owner_uid: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner_name(job_id),
        "uid": owner_uid,
        "blockOwnerDeletion": False,
    }


def binding_annotation(node: str, launch: TaskLaunch) -> str:
    slices = [
        {
            "gpu_uuid": a.gpu_uuid,
            "mig_instance": a.mig_instance,
            "memory_mib": a.memory_mib,
            "compute_pct": a.compute_pct,
            "tier": a.tier,
        }
        for a in launch.slices
    ]
    return json.dumps({"node": node, "slices": slices, "env": slice_env(launch)}, sort_keys=True)


def slice_env(launch: TaskLaunch) -> dict[str, str]:
    """The part of the launch contract that depends on the slices (the device plugin injects it)."""
    keys = ("CUDA_VISIBLE_DEVICES", "TESSERA_GPU_UUIDS", "TESSERA_SLICE_ID")
    return {k: launch.env[k] for k in keys if k in launch.env}


def job_labels(labels: dict[str, str]) -> dict[str, str]:
    """A job's own labels that are valid Kubernetes labels (the rest stay on the job only)."""
    return {
        k: v
        for k, v in labels.items()
        if len(k) <= 253
        and _LABEL_KEY.match(k)
        and len(v) <= 63
        and _LABEL_VALUE.match(v)
        and not k.startswith(f"{names.DOMAIN}/")
    }


def build_pod(
    launch: TaskLaunch,
    node: str,
    namespace: str,
    owner_uid: str,
    *,
    labels: dict[str, str] | None = None,
    image: str = DEFAULT_IMAGE,
    rank0: bool = False,
    cache_dir: str = "/var/lib/tessera/cache",
    service_account: str | None = None,
    resources: Resources | None = None,
) -> Obj:
    """The Pod for one task attempt, to be created unbound and then bound to ``node``."""
    env = {k: v for k, v in launch.env.items() if k not in slice_env(launch)}
    pod_labels = {
        **job_labels(labels or {}),
        names.MANAGED_BY: names.MANAGED_BY_VALUE,
        names.JOB: str(launch.job_id),
        names.TASK: str(launch.task_id),
        names.ATTEMPT: str(launch.attempt),
        names.GROUP: launch.group,
        names.INDEX: str(launch.index),
    }
    if rank0:
        pod_labels[names.RANK0] = "true"
    role = launch.env.get("TESSERA_ELASTIC_ROLE")
    if role:  # an elastic job's per-job Ray cluster: its head and worker pods, as KubeRay labels them
        pod_labels[names.RAY_NODE_TYPE] = role
    annotations = {
        names.BINDING: binding_annotation(node, launch),
        names.ALLOCATION: names.ALLOCATING if launch.slices else names.ALLOCATED,
        names.BOUND_AT: f"{time.time():.6f}",
    }
    container: Obj = {
        "name": "task",
        "image": launch.image or image,
        "command": list(launch.argv),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
    }
    if launch.cwd:
        container["workingDir"] = launch.cwd
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if resources is not None:  # what the scheduler counted, so the kubelet's QoS and eviction agree
        requests = {"cpu": f"{resources.cpu:g}", "memory": f"{resources.memory}Mi"}
        limits = {"memory": f"{resources.memory}Mi"}
    if launch.slices:
        limits[names.SLICE_RESOURCE] = requests[names.SLICE_RESOURCE] = str(len(launch.slices))
    if limits or requests:
        container["resources"] = {"limits": limits, "requests": requests}

    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for mount in launch.data:
        if mount.dataset_id is None:
            continue
        # the node agent keeps the dataset's cache on the host; the task reads it through hostPath
        vol = f"data-{_dns(mount.dataset, 40)}"
        path = f"{cache_dir}/data/{mount.dataset_id}"  # the node agent's cache layout (--cache-dir)
        volumes.append({"name": vol, "hostPath": {"path": path, "type": "DirectoryOrCreate"}})
        target = mount.path or f"/data/{mount.dataset}"
        mounts.append({"name": vol, "mountPath": target, "readOnly": True})
        container["env"].append({"name": f"TESSERA_DATA_{_env_name(mount.dataset)}", "value": target})
    if mounts:
        container["volumeMounts"] = mounts
    spec: Obj = {
        "schedulerName": names.SCHEDULER_NAME,
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [container],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if launch.env.get("TESSERA_ELASTIC_ROLE") == "head" or rank0:
        spec["hostname"] = pod_name(launch)
    if volumes:
        spec["volumes"] = volumes
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(launch),
            "namespace": namespace,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [_owner_ref(launch.job_id, owner_uid)],
        },
        "spec": spec,
    }


def _env_name(dataset: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", dataset.upper()).strip("_")


def spec_hash(pod: Obj) -> str:
    return hashlib.sha256(json.dumps(pod["spec"], sort_keys=True).encode()).hexdigest()[:12]


# status -> report ---------------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _terminated(pod: Obj) -> Obj | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == "task" or len(pod["spec"]["containers"]) == 1:
            state = status.get("state") or {}
            return state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


def task_report(pod: Obj, task_id: uuid.UUID, attempt: int) -> TaskReport | None:
    """What the pod's status says about its task (None while nothing is known yet).

    Running -> RUNNING; Succeeded -> SUCCEEDED; Failed -> FAILED with the container's exit code,
    OOMKilled -> HostOOM (the kernel's OOM killer ended it: the pod's memory limit or the node's
    memory), Evicted -> Evicted (the kubelet took it off its node); a container that cannot start
    (image pull, bad command) -> a start error.
    """
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    started = _time(status.get("startTime"))
    term = _terminated(pod)
    if phase == "Pending":
        if not (pod.get("spec") or {}).get("nodeName"):
            return None
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in {
                "ErrImagePull",
                "ImagePullBackOff",
                "InvalidImageName",
                "CreateContainerConfigError",
                "CreateContainerError",
            }:
                why = f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
                return TaskReport(
                    task_id=task_id,
                    attempt=attempt,
                    state=TaskState.FAILED,
                    exit_code=128,
                    start_error=why[:1000],
                    finished_at=datetime.now(UTC),
                )
        return TaskReport(task_id=task_id, attempt=attempt, state=TaskState.STARTING)
    if phase == "Running":
        return TaskReport(task_id=task_id, attempt=attempt, state=TaskState.RUNNING, started_at=started)
    finished = _time((term or {}).get("finishedAt")) or datetime.now(UTC)
    if phase == "Succeeded":
        return TaskReport(
            task_id=task_id,
            attempt=attempt,
            state=TaskState.SUCCEEDED,
            exit_code=0,
            started_at=started,
            finished_at=finished,
        )
    # Failed
    exit_code = int((term or {}).get("exitCode", 1))
    reason: TerminalReason | None = None
    message: str | None = status.get("message") or (term or {}).get("message")
    if status.get("reason") == "Evicted":
        reason = TerminalReason.EVICTED
        message = message or "the kubelet evicted the pod"
    elif (term or {}).get("reason") == "OOMKilled":
        reason = TerminalReason.HOST_OOM
        message = message or "the container was OOM-killed (its memory limit or the node's memory)"
    # Evicted is the kubelet's word, read here by the control plane itself: not an agent's report,
    # whose validation refuses it
    return TaskReport.model_construct(
        task_id=task_id,
        attempt=attempt,
        state=TaskState.FAILED,
        exit_code=exit_code,
        reason=reason,
        message=(message or None) and str(message)[:1000],
        started_at=started,
        finished_at=finished,
    )


def vanished_report(task_id: uuid.UUID, attempt: int) -> TaskReport:
    """A pod Tessera created is gone though its task should run: deleted by someone, or by the
    pod garbage collector after its node went away."""
    return TaskReport.model_construct(
        task_id=task_id,
        attempt=attempt,
        state=TaskState.FAILED,
        exit_code=137,
        start_error=None,
        started_at=None,
        reason=TerminalReason.NODE_LOST,
        message="its pod was deleted outside Tessera (or its node is gone)",
        finished_at=datetime.now(UTC),
    )


def gone_report(pod: Obj, task_id: uuid.UUID, attempt: int) -> TaskReport:
    """A pod Tessera no longer wanted is deleted: its attempt is over, whatever the pod's last status
    said (a kubelet deletes a stopped pod right after writing it), so its slices stop counting."""
    final = task_report(pod, task_id, attempt)
    if final is not None and final.state in (TaskState.SUCCEEDED, TaskState.FAILED):
        return final
    return TaskReport(
        task_id=task_id,
        attempt=attempt,
        state=TaskState.FAILED,
        exit_code=137,
        message="its pod was deleted",
        finished_at=datetime.now(UTC),
    )
