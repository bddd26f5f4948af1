"""The node agent in Kubernetes mode (`tessera node --kubernetes`, the DaemonSet's command line) against
the real test API server: it registers its GPUs (winning over the Node object's inventory), serves the
device plugin to a kubelet (tests/kube/kubelet.py), and Allocate hands a bound pod its slice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.kube import names
from tests.e2e.cluster import TESSERA
from tests.kube.cluster import LocalCluster
from tests.kube.kubelet import FakeKubelet
from tests.kube.plane import KubePlane, gpu_job, wait

SIMULATED = "1xH100-80GB"


@pytest.fixture
def plane(k8s: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[KubePlane]:
    p = KubePlane(k8s, namespace, tmp_path / "home").start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def kubelet() -> Iterator[FakeKubelet]:
    # unix socket paths are limited to 107 bytes: a short directory under /tmp
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="tna-"))
    k = FakeKubelet(directory)
    k.start()
    try:
        yield k
    finally:
        k.stop()
        shutil.rmtree(directory, ignore_errors=True)


def node_token(plane: KubePlane, name: str, path: Path) -> Path:
    assert plane.api("POST", "/users", json={"name": f"agent-{name}"}).status_code == 201
    r = plane.api("POST", "/tokens", json={"name": name, "user": f"agent-{name}", "scopes": ["node"]})
    assert r.status_code == 201, r.text
    path.write_text(r.json()["secret"])
    return path


def start_agent(
    k8s: LocalCluster, plane: KubePlane, node: str, kubelet: FakeKubelet, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """The DaemonSet's command line and environment, plus what points it at this test's directories."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(
        NODE_NAME=node,
        TESSERA_NODE_NAME=node,
        TESSERA_HOME=str(tmp_path / "node"),
        KUBECONFIG=str(k8s.kubeconfig),
    )
    argv = [
        *(TESSERA, "node", "--kubernetes", "--url", plane.url),
        *("--token-file", str(node_token(plane, node, tmp_path / "token"))),
        *("--simulate-gpus", SIMULATED, "--device-plugin-dir", str(kubelet.dir)),
        *("--cache-dir", str(tmp_path / "cache"), "--cgroup-root", str(tmp_path / "cgroup")),
        *("--listen-host", "127.0.0.1", "--advertise-host", "127.0.0.1", "--heartbeat", "1"),
    ]
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def test_the_agent_registers_serves_the_device_plugin_and_allocates_a_bound_pod(
    k8s: LocalCluster, namespace: str, plane: KubePlane, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    kube = k8s.kube
    assert kube is not None
    node, selector = f"{namespace}-gpu", {"test.tessera.io/ns": namespace}
    # the Node object says 2 GPUs: the control plane would register those, until the agent does
    k8s.add_gpu_node(node, gpus=2, labels=selector)
    agent = start_agent(k8s, plane, node, kubelet, tmp_path)

    def log() -> str:
        return (tmp_path / "agent.log").read_text(errors="replace")[-3000:]

    try:
        try:
            kubelet.wait_for(lambda k: bool(k.registrations) and bool(k.device_updates), timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log()}") from None
        (registration,) = kubelet.registrations
        assert registration.resource_name == names.SLICE_RESOURCE
        gpu = f"SIM-{node}-0"
        devices = kubelet.devices()
        assert devices and {d.rsplit("-s", 1)[0] for d in devices} == {gpu}

        def registered() -> dict[str, Any] | None:
            found = {n["name"]: n for n in plane.api("GET", "/nodes").json()}.get(node)
            return found if found and found.get("agent_url") else None

        found = wait(f"node {node} registered by its agent\n{log()}", registered)
        # the agent's inventory (its one simulated GPU), and the Node object's labels for selectors
        assert [g["uuid"] for g in found["inventory"]["gpus"]] == [gpu], found["inventory"]
        assert found["labels"]["test.tessera.io/ns"] == namespace and found["state"] == "Ready"

        job = plane.submit(gpu_job("dp", selector))

        def bound() -> dict[str, Any] | None:
            pods = [p for p in plane.pods(job["id"]) if p["spec"].get("nodeName") == node]
            return pods[0] if pods else None

        pod = wait(f"job {job['id']}'s pod bound to {node}\n{plane.log_tail()}", bound)
        binding = json.loads(pod["metadata"]["annotations"][names.BINDING])
        assert binding["slices"][0]["gpu_uuid"] == gpu  # placed on the agent's GPU, not the Node's
        # the kubelet starts the pod: Allocate with one of the plugin's devices
        response = kubelet.allocate([sorted(devices)[0]], timeout=10)
        (container,) = response.container_responses
        envs = dict(container.envs)
        assert envs["NVIDIA_VISIBLE_DEVICES"] == gpu
        assert envs["TESSERA_SLICE_MEMORY_MIB"] == "10240" and envs["TESSERA_SLICE_COMPUTE_PCT"] == "25"
        assert envs["CUDA_VISIBLE_DEVICES"] == binding["env"]["CUDA_VISIBLE_DEVICES"]
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        wait(
            "the pod marked allocated",
            lambda: kube.get(path)["metadata"]["annotations"][names.ALLOCATION] == names.ALLOCATED,
        )
        # no other pod waits: a second Allocate finds nothing to hand out
        with pytest.raises(grpc.RpcError, match="no pod on node"):
            kubelet.allocate([sorted(devices)[1]], timeout=10)
        # the Node object's inventory never replaces the agent's
        again = registered()
        assert again is not None and [g["uuid"] for g in again["inventory"]["gpus"]] == [gpu]
        assert agent.poll() is None, log()
    finally:
        stop(agent)
    assert agent.returncode == 0, log()
    assert not (kubelet.dir / "tessera-slice.sock").exists()  # the plugin removed its socket
