"""Tessera as a secondary scheduler: pods others create with schedulerName: tessera are gang
scheduled by the same core and bound, whichever pod-group spelling they use."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import LocalCluster
from tests.kube.plane import KubePlane, wait

CRDS = {
    "scheduling.x-k8s.io": "v1alpha1",
    "scheduling.volcano.sh": "v1beta1",
}


@pytest.fixture
def plane(k8s: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[KubePlane]:
    p = KubePlane(k8s, namespace, tmp_path / "home").start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def podgroup_crds(k8s: LocalCluster) -> None:
    """The PodGroup kinds of the coscheduling plugin and of Volcano (just enough schema to store)."""
    assert k8s.kube is not None
    for group, version in CRDS.items():
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"podgroups.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "podgroups", "singular": "podgroup", "kind": "PodGroup"},
                "versions": [
                    {
                        "name": version,
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        try:
            k8s.kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        except Exception as exc:  # created by an earlier module run in this session
            assert "already exists" in str(exc)
    for group, version in CRDS.items():
        wait(
            f"{group} PodGroups served",
            lambda g=group, v=version: _served(k8s, f"/apis/{g}/{v}"),
            30,
        )


def _served(k8s: LocalCluster, path: str) -> bool:
    assert k8s.kube is not None
    try:
        return any(r["name"] == "podgroups" for r in k8s.kube.get(path)["resources"])
    except Exception:
        return False


def _pod(
    namespace: str, name: str, labels: dict[str, str], notes: dict[str, str], slices: int = 1
) -> dict[str, Any]:
    limits = {"tessera.io/slice": str(slices)} if slices else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": notes},
        "spec": {
            "schedulerName": "tessera",
            "containers": [
                {
                    "name": "pytorch",
                    "image": "kubeflow/pytorch-dist-mnist:latest",
                    "resources": {"limits": limits},
                }
            ],
        },
    }


def _create(k8s: LocalCluster, pod: dict[str, Any]) -> None:
    assert k8s.kube is not None
    k8s.kube.create(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods", pod)


def _get(k8s: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    assert k8s.kube is not None
    return k8s.kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")


def _nodes(k8s: LocalCluster, namespace: str, plane: KubePlane, count: int = 2) -> list[str]:
    names = [f"{namespace}-g{i}" for i in range(count)]
    for name in names:
        k8s.add_gpu_node(name, gpus=2, labels={"test.tessera.io/ns": namespace})
    plane.wait_nodes(names)
    return names


def _external_jobs(plane: KubePlane) -> list[dict[str, Any]]:
    jobs = plane.api("GET", "/jobs", params={"limit": 200}).json()["items"]
    return [j for j in jobs if "tessera.io/external" in j["spec"]["labels"]]


def test_a_coscheduling_gang_waits_for_min_member_then_binds_together(
    k8s: LocalCluster, namespace: str, plane: KubePlane, podgroup_crds: None
) -> None:
    nodes = _nodes(k8s, namespace, plane)
    assert k8s.kube is not None
    k8s.kube.create(
        f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{namespace}/podgroups",
        {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": {"name": "mnist"},
            "spec": {"minMember": 3},
        },
    )
    labels = {"scheduling.x-k8s.io/pod-group": "mnist", "training.kubeflow.org/job-name": "mnist"}
    notes = {"tessera.io/gpu-memory": "20Gi", "tessera.io/gpu-compute": "50"}
    for i in range(2):
        _create(k8s, _pod(namespace, f"mnist-worker-{i}", labels, notes))
    time.sleep(2.0)  # two of three: the gang is incomplete, so nothing is bound
    assert not any(_get(k8s, namespace, f"mnist-worker-{i}")["spec"].get("nodeName") for i in range(2))
    assert not [j for j in _external_jobs(plane) if j["spec"]["labels"]["kubernetes.namespace"] == namespace]
    _create(k8s, _pod(namespace, "mnist-worker-2", labels, notes))
    bound = wait(
        "all three pods bound",
        lambda: (
            (ps := [_get(k8s, namespace, f"mnist-worker-{i}") for i in range(3)])
            and all(p["spec"].get("nodeName") for p in ps)
            and ps
        ),
        30,
    )
    for pod in bound:
        assert pod["spec"]["nodeName"] in nodes
        binding = json.loads(pod["metadata"]["annotations"]["tessera.io/binding"])
        assert binding["slices"][0]["memory_mib"] == 20480 and binding["slices"][0]["compute_pct"] == 50
        assert pod["metadata"]["annotations"]["tessera.io/allocation"] == "allocating"
    [job] = [j for j in _external_jobs(plane) if j["spec"]["labels"]["kubernetes.namespace"] == namespace]
    assert job["spec"]["groups"][0]["min_available"] == 3
    plane.wait_state(job["id"], "RUNNING")  # KWOK runs the bound pods; their statuses drive the job
    for i in range(3):
        k8s.kube.delete(f"/api/v1/namespaces/{namespace}/pods/mnist-worker-{i}", grace=0)
    plane.wait_state(job["id"], "CANCELLED")


def test_volcano_and_single_pods_are_scheduled_too(
    k8s: LocalCluster, namespace: str, plane: KubePlane, podgroup_crds: None
) -> None:
    _nodes(k8s, namespace, plane)
    assert k8s.kube is not None
    k8s.kube.create(
        f"/apis/scheduling.volcano.sh/v1beta1/namespaces/{namespace}/podgroups",
        {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": {"name": "vc"},
            "spec": {"minMember": 2},
        },
    )
    notes = {"scheduling.k8s.io/group-name": "vc", "tessera.io/gpus": "1"}
    for i in range(2):
        _create(k8s, _pod(namespace, f"vc-{i}", {}, notes))
    # a KServe predictor: one pod, a slice by annotation, no gang
    _create(k8s, _pod(namespace, "predictor", {}, {"tessera.io/gpu-memory": "8192"}))
    # malformed annotations, or a GPU pod that does not request Tessera's device (it would see every
    # GPU of its node): never bound, and nothing is queued for them
    _create(k8s, _pod(namespace, "broken", {}, {"tessera.io/gpu-memory": "lots"}))
    _create(k8s, _pod(namespace, "unplugged", {}, {"tessera.io/gpu-memory": "8Gi"}, slices=0))
    _create(k8s, _pod(namespace, "rude", {}, {"tessera.io/gpus": "1", "tessera.io/priority": "high"}))
    for name in ("vc-0", "vc-1", "predictor"):
        wait(f"{name} bound", lambda n=name: _get(k8s, namespace, n)["spec"].get("nodeName"), 30)
    jobs = [j for j in _external_jobs(plane) if j["spec"]["labels"]["kubernetes.namespace"] == namespace]
    by_size = sorted(j["spec"]["groups"][0]["replicas"] for j in jobs)
    assert by_size == [1, 2]
    predictor = json.loads(_get(k8s, namespace, "predictor")["metadata"]["annotations"]["tessera.io/binding"])
    assert predictor["slices"][0]["memory_mib"] == 8192
    for name in ("broken", "unplugged", "rude"):
        assert not _get(k8s, namespace, name)["spec"].get("nodeName")
