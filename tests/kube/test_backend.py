"""The Kubernetes backend against a real API server: Node objects become Tessera nodes, bound tasks
become Pods bound through the Binding API, and pods' statuses drive jobs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kube.cluster import LocalCluster
from tests.kube.plane import KubePlane, gpu_job, wait


@pytest.fixture
def plane(k8s: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[KubePlane]:
    p = KubePlane(k8s, namespace, tmp_path / "home").start()
    try:
        yield p
    finally:
        p.stop()


def _nodes(k8s: LocalCluster, namespace: str, count: int, gpus: int = 8) -> tuple[list[str], dict[str, str]]:
    selector = {"test.tessera.io/ns": namespace}
    names = [f"{namespace}-n{i}" for i in range(count)]
    for name in names:
        k8s.add_gpu_node(name, gpus=gpus, labels=selector)
    return names, selector


def _status(k8s: LocalCluster, pod: dict[str, Any], status: dict[str, Any]) -> None:
    """Write a pod's status as a kubelet would."""
    assert k8s.kube is not None
    meta = pod["metadata"]
    k8s.kube.merge_patch(
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": status}
    )


def _terminated(exit_code: int, reason: str) -> dict[str, Any]:
    return {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "task",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
            }
        ],
    }


def test_gpu_nodes_come_from_node_objects(k8s: LocalCluster, namespace: str, plane: KubePlane) -> None:
    names, _ = _nodes(k8s, namespace, 2, gpus=4)
    nodes = plane.wait_nodes(names)
    for node in nodes:
        gpus = node["inventory"]["gpus"]
        assert len(gpus) == 4
        assert gpus[0]["model"] == "NVIDIA H100 80GB HBM3" and gpus[0]["memory_mib"] == 81559
        assert node["labels"]["test.tessera.io/ns"] == namespace
    # a node without GPUs is not Tessera's
    assert k8s.kube is not None
    k8s.kube.create(
        "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{namespace}-cpu"}}
    )
    listed = {n["name"] for n in plane.api("GET", "/nodes").json()}
    assert f"{namespace}-cpu" not in listed


def test_a_gang_runs_as_pods_bound_through_the_binding_api(
    k8s: LocalCluster, namespace: str, plane: KubePlane
) -> None:
    names, selector = _nodes(k8s, namespace, 2)
    plane.wait_nodes(names)
    job = plane.submit(gpu_job("gang", selector, replicas=3, labels={"test.tessera.io/run": "1500ms"}))
    running = plane.wait_state(job["id"], "RUNNING", "SUCCEEDED")
    pods = plane.pods(job["id"])
    assert len(pods) == 3
    allocations = {a["task_id"]: a for a in running["allocations"]}
    tasks = {t["id"]: t for t in running["tasks"]}
    owner = k8s.kube.get(f"/api/v1/namespaces/{namespace}/configmaps/tessera-job-{job['id']}")  # type: ignore[union-attr]
    for pod in pods:
        meta, spec = pod["metadata"], pod["spec"]
        task = tasks[meta["labels"]["tessera.io/task"]]
        assert spec["schedulerName"] == "tessera"
        assert spec["nodeName"] == task["node"] and spec["nodeName"] in names
        assert meta["labels"]["tessera.io/job"] == job["id"]
        assert meta["labels"]["tessera.io/attempt"] == "0"
        assert meta["labels"]["test.tessera.io/run"] == "1500ms"  # the job's labels travel
        assert meta["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        binding = json.loads(meta["annotations"]["tessera.io/binding"])
        alloc = allocations[task["id"]]
        assert binding["node"] == task["node"]
        assert binding["slices"][0]["gpu_uuid"] == alloc["gpu_uuid"]
        assert binding["slices"][0]["memory_mib"] == 10240 and binding["slices"][0]["compute_pct"] == 25
        assert binding["env"]["CUDA_VISIBLE_DEVICES"] == alloc["gpu_uuid"]
        assert meta["annotations"]["tessera.io/allocation"] == "allocating"
        container = spec["containers"][0]
        assert container["resources"]["limits"] == {"tessera.io/slice": "1", "memory": "1Gi"}
        assert container["resources"]["requests"] == {"tessera.io/slice": "1", "cpu": "1", "memory": "1Gi"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["WORLD_SIZE"] == "3" and env["TESSERA_JOB_ID"] == job["id"]
        svc = f"gang-{uuid.UUID(job['id']).hex[:8]}.{namespace}.svc"
        assert env["MASTER_ADDR"] == svc
    rank0 = [p for p in pods if p["metadata"]["labels"].get("tessera.io/rank0") == "true"]
    assert len(rank0) == 1
    service = k8s.kube.get(  # type: ignore[union-attr]
        f"/api/v1/namespaces/{namespace}/services/gang-{uuid.UUID(job['id']).hex[:8]}"
    )
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"tessera.io/job": job["id"], "tessera.io/rank0": "true"}
    done = plane.wait_state(job["id"], "SUCCEEDED", "FAILED")
    assert done["status"]["state"] == "SUCCEEDED", done["status"]


def test_pod_outcomes_drive_the_job(k8s: LocalCluster, namespace: str, plane: KubePlane) -> None:
    names, selector = _nodes(k8s, namespace, 1)
    plane.wait_nodes(names)
    failing = plane.submit(
        gpu_job("fails", selector, labels={"test.tessera.io/run": "1s", "test.tessera.io/exit": "3"})
    )
    oom = plane.submit(gpu_job("oom", selector))
    evicted = plane.submit(gpu_job("evicted", selector))
    for job in (oom, evicted):
        plane.wait_state(job["id"], "RUNNING")
    [oom_pod] = plane.pods(oom["id"])
    _status(k8s, oom_pod, _terminated(137, "OOMKilled"))
    [ev_pod] = plane.pods(evicted["id"])
    _status(k8s, ev_pod, {**_terminated(137, "Error"), "reason": "Evicted", "message": "low on memory"})

    failed = plane.wait_state(failing["id"], "FAILED")
    assert failed["status"]["exit_code"] == 3 and failed["status"]["reason"] == "Error"
    oomed = plane.wait_state(oom["id"], "FAILED")
    assert oomed["status"]["reason"] == "HostOOM", oomed["status"]
    # an eviction requeues without spending a retry: a new attempt gets a new pod
    wait("the evicted job's second attempt", lambda: plane.job(evicted["id"])["status"]["attempt"] == 1)
    second = plane.wait_state(evicted["id"], "RUNNING")
    assert second["attempts"][0]["reason"] == "Evicted"
    pods = {p["metadata"]["name"]: p for p in plane.pods(evicted["id"])}
    assert any(n.endswith("-a1") for n in pods) and any(n.endswith("-a0") for n in pods)


def test_cancel_deletes_pods_and_delete_removes_everything(
    k8s: LocalCluster, namespace: str, plane: KubePlane
) -> None:
    names, selector = _nodes(k8s, namespace, 1)
    plane.wait_nodes(names)
    job = plane.submit(gpu_job("cancelme", selector, replicas=2))
    plane.wait_state(job["id"], "RUNNING")
    assert len(plane.pods(job["id"])) == 2
    assert plane.api("POST", f"/jobs/{job['id']}/cancel").status_code in (200, 202)
    wait("the cancelled job's pods to go", lambda: not plane.pods(job["id"]), 30)
    assert plane.job(job["id"])["status"]["state"] == "CANCELLED"
    # the deleted pods' attempts are over: their slices stop counting (none left draining)
    wait(
        "the slices to be released",
        lambda: not (j := plane.job(job["id"]))["draining"] and not j["allocations"],
    )
    assert plane.api("DELETE", f"/jobs/{job['id']}").status_code in (200, 202, 204)
    assert k8s.kube is not None
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    wait(
        "the deleted job's owner object to go",
        lambda: not k8s.kube.list(path, f"tessera.io/job={job['id']}")["items"],
        30,
    )


def test_a_lost_node_fails_its_jobs_over(k8s: LocalCluster, namespace: str, plane: KubePlane) -> None:
    names, selector = _nodes(k8s, namespace, 2)
    plane.wait_nodes(names)
    job = plane.submit(gpu_job("survivor", selector, retry={"max_retries": 2}))
    running = plane.wait_state(job["id"], "RUNNING")
    node = running["tasks"][0]["node"]
    assert k8s.kube is not None
    k8s.kube.delete(f"/api/v1/nodes/{node}")
    wait("the second attempt", lambda: plane.job(job["id"])["status"]["attempt"] >= 1, 40)
    again = plane.wait_state(job["id"], "RUNNING", timeout=40)
    assert again["tasks"][0]["node"] != node
    assert again["attempts"][0]["reason"] == "NodeLost"


def test_logs_come_through_the_pod_log_api(k8s: LocalCluster, namespace: str, plane: KubePlane) -> None:
    names, selector = _nodes(k8s, namespace, 1)
    plane.wait_nodes(names)
    # KWOK serves this file (CRI log format) as every pod's log, behind the API server
    k8s.pod_log.write_text(
        "2026-11-30T10:00:00.000000000Z stdout F epoch 1 loss 0.91\n"
        "2026-11-30T10:00:01.000000000Z stderr F epoch 2 loss 0.55\n"
    )
    job = plane.submit(gpu_job("logged", selector))
    plane.wait_state(job["id"], "RUNNING")
    r = plane.api("GET", f"/jobs/{job['id']}/logs")
    assert r.status_code == 200, r.text
    assert r.text == "epoch 1 loss 0.91\nepoch 2 loss 0.55\n"
    r = plane.api("GET", f"/jobs/{job['id']}/logs", params={"tail": 1})
    assert r.text == "epoch 2 loss 0.55\n"
    # followed: the stream stays open (the kubelet keeps following) and delivers what is there
    headers = {"Authorization": f"Bearer {plane.token}"}
    url = f"{plane.url}/api/v1/jobs/{job['id']}/logs"
    with httpx.stream("GET", url, params={"follow": "true"}, headers=headers, timeout=30) as streamed:
        assert streamed.status_code == 200
        seen = b""
        for chunk in streamed.iter_bytes():
            seen += chunk
            if seen.count(b"\n") >= 2:
                break
    assert seen == b"epoch 1 loss 0.91\nepoch 2 loss 0.55\n"


def test_an_elastic_job_runs_as_a_ray_head_and_worker_pods(
    k8s: LocalCluster, namespace: str, plane: KubePlane
) -> None:
    names, selector = _nodes(k8s, namespace, 2, gpus=2)
    plane.wait_nodes(names)
    body = {
        "name": "ray",
        "kind": "elastic",
        "node_selector": selector,
        "groups": [
            {
                "name": "worker",
                "replicas": 3,
                "min_available": 2,
                "command": ["python", "-m", "tessera.jobs.elastic"],
                "image": "rayproject/ray:2.50.0-py311-gpu",
                "resources": {"gpus": 1},
            }
        ],
        "elastic": {"min_workers": 2, "max_workers": 3, "entry": "train:loop", "storage": "s3://ckpt/ray"},
    }
    job = plane.submit(body)
    plane.wait_state(job["id"], "RUNNING")
    pods = plane.pods(job["id"])
    roles = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods)
    assert roles == ["head", "worker", "worker"]
    service = f"ray-{uuid.UUID(job['id']).hex[:8]}"
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        host, _, port = env["TESSERA_RAY_ADDRESS"].partition(":")
        assert host == f"{service}.{namespace}.svc" and port.isdigit()
        assert env["RAY_AUTH_TOKEN"]
        assert pod["spec"]["containers"][0]["image"] == "rayproject/ray:2.50.0-py311-gpu"
    [head] = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head"]
    assert head["metadata"]["labels"]["tessera.io/rank0"] == "true"
    assert k8s.kube is not None
    svc = k8s.kube.get(f"/api/v1/namespaces/{namespace}/services/{service}")
    assert svc["spec"]["selector"]["tessera.io/rank0"] == "true"
