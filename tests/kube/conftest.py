"""One real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK) per
test session, shared by the Kubernetes tests; each test works in a namespace of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.kube.cluster import LocalCluster, bin_dir


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # one xdist worker runs every test that uses the cluster, so the session starts it once
    for item in items:
        if "k8s" in getattr(item, "fixturenames", ()) or "namespace" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("k8s"))


@pytest.fixture(scope="session")
def k8s() -> Iterator[LocalCluster]:
    path = bin_dir()
    if path is None:
        if os.environ.get("TESSERA_REQUIRE_K8S"):
            pytest.fail("the Kubernetes test programs are missing: run scripts/k8s-testenv install")
        pytest.skip("the Kubernetes test programs are not installed (scripts/k8s-testenv install)")
    cluster = LocalCluster(path).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def namespace(k8s: LocalCluster) -> Iterator[str]:
    assert k8s.kube is not None
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    k8s.kube.delete(f"/api/v1/namespaces/{name}")
    # the test's nodes (labelled with its namespace) go too, so no later test places pods on them
    for node in k8s.kube.list("/api/v1/nodes", f"test.tessera.io/ns={name}")["items"]:
        k8s.kube.delete(f"/api/v1/nodes/{node['metadata']['name']}")
