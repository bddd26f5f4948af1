"""The device plugin over real gRPC and real unix sockets, driven by the fake kubelet in kubelet.py."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.kube import names
from tessera.kube.deviceplugin import api_pb2, api_pb2_grpc
from tessera.kube.deviceplugin.matching import PodBinding, SliceBinding, pick_pod, slice_env
from tessera.kube.deviceplugin.plugin import API_VERSION, PLUGIN_SOCKET, DevicePlugin
from tessera.kube.deviceplugin.pods import InMemoryPodSource, PodInfo, slice_request_count
from tests.kube.kubelet import FakeKubelet

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-1"
GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
MIG = "MIG-cccccccc-0000-0000-0000-000000000003"
SLOTS = 2


def make_pod(
    name: str,
    *slices: tuple[str | None, int, float],
    bound_at: float | None = 100.0,
    state: str = names.ALLOCATING,
    mig: str | None = None,
    count: int | None = None,
) -> PodInfo:
    """A pod with a binding of `slices` (gpu uuid, memory MiB, compute %); env POD names the pod."""
    binding = PodBinding(
        node=NODE,
        slices=[
            SliceBinding(gpu_uuid=g, mig_instance=mig, memory_mib=m, compute_pct=c, tier="soft")
            for g, m, c in slices
        ],
        env={"POD": name},
    )
    annotations = {names.BINDING: binding.to_annotation(), names.ALLOCATION: state}
    if bound_at is not None:
        annotations[names.BOUND_AT] = repr(bound_at)
    count = len(slices) if count is None else count
    return PodInfo(namespace="ns", name=name, uid=f"uid-{name}", annotations=annotations, slice_count=count)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes: a short directory under /tmp, unique per test
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="tdp-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[FakeKubelet]:
    k = FakeKubelet(plugin_dir)
    k.start()
    yield k
    k.stop()


@pytest.fixture
def pods() -> InMemoryPodSource:
    return InMemoryPodSource()


def new_plugin(plugin_dir: Path, pods: Any) -> DevicePlugin:
    return DevicePlugin(
        NODE, [GPU_A, GPU_B], pods, slots_per_gpu=SLOTS, plugin_dir=plugin_dir, poll_interval_s=0.05
    )


@pytest.fixture
def plugin(plugin_dir: Path, kubelet: FakeKubelet, pods: InMemoryPodSource) -> Iterator[DevicePlugin]:
    p = new_plugin(plugin_dir, pods)
    p.start()
    kubelet.wait_for(lambda k: len(k.registrations) == 1 and len(k.device_updates) >= 1)
    yield p
    p.stop()


def registered(n: int) -> Any:
    return lambda k: len(k.registrations) >= n


def test_registers_with_the_kubelet(plugin: DevicePlugin, kubelet: FakeKubelet) -> None:
    (request,) = kubelet.registrations
    assert request.version == API_VERSION == "v1beta1"
    assert request.endpoint == PLUGIN_SOCKET == "tessera-slice.sock"
    assert request.resource_name == names.SLICE_RESOURCE == "tessera.io/slice"
    assert request.HasField("options")
    assert not request.options.pre_start_required
    assert not request.options.get_preferred_allocation_available
    kubelet.wait_for(lambda k: k.options() is not None)
    options = kubelet.options()
    assert options is not None and not options.pre_start_required


def test_list_and_watch_sends_devices_then_health_changes(plugin: DevicePlugin, kubelet: FakeKubelet) -> None:
    healthy = {f"{gpu}-s{k}": "Healthy" for gpu in (GPU_A, GPU_B) for k in range(SLOTS)}
    assert kubelet.devices() == healthy

    plugin.set_health(GPU_B, False)
    kubelet.wait_for(lambda k: len(k.device_updates) == 2)
    assert kubelet.devices() == {**healthy, f"{GPU_B}-s0": "Unhealthy", f"{GPU_B}-s1": "Unhealthy"}

    plugin.set_health(GPU_B, False)  # no change: nothing sent (a stream would send within milliseconds)
    time.sleep(0.2)
    assert len(kubelet.device_updates) == 2
    plugin.set_health(GPU_B, True)
    kubelet.wait_for(lambda k: k.devices() == healthy)
    assert len(kubelet.device_updates) == 3

    with pytest.raises(KeyError, match="no GPU GPU-x"):
        plugin.set_health("GPU-x", False)


def test_stop_ends_list_and_watch(plugin: DevicePlugin, kubelet: FakeKubelet) -> None:
    plugin.stop()
    kubelet.wait_for(lambda k: k.streams_ended == 1)
    assert not (kubelet.dir / PLUGIN_SOCKET).exists()


def test_allocate_takes_the_oldest_matching_pod_then_the_next(
    plugin: DevicePlugin, kubelet: FakeKubelet, pods: InMemoryPodSource
) -> None:
    pods.add(NODE, make_pod("newer", (GPU_B, 4096, 25.0), bound_at=200.0))
    pods.add(NODE, make_pod("older", (GPU_A, 8192, 50.0), bound_at=100.0))
    pods.add(NODE, make_pod("two", (GPU_A, 1024, 10.0), (GPU_B, 2048, 12.5), bound_at=50.0))
    pods.add(NODE, make_pod("taken", (GPU_A, 1024, 10.0), bound_at=1.0, state=names.ALLOCATED))
    pods.add("node-2", make_pod("elsewhere", (GPU_A, 1024, 10.0), bound_at=2.0))

    (first,) = kubelet.allocate([f"{GPU_B}-s1"]).container_responses
    assert dict(first.envs) == {
        "POD": "older",
        "NVIDIA_VISIBLE_DEVICES": GPU_A,
        "TESSERA_SLICE_MEMORY_MIB": "8192",
        "TESSERA_SLICE_COMPUTE_PCT": "50",
    }
    assert json.loads(first.annotations[names.BINDING])["slices"][0]["gpu_uuid"] == GPU_A
    assert pods.get("ns", "older").annotations[names.ALLOCATION] == names.ALLOCATED

    (second,) = kubelet.allocate([f"{GPU_A}-s0"]).container_responses
    assert second.envs["POD"] == "newer"
    assert second.envs["TESSERA_SLICE_COMPUTE_PCT"] == "25"

    (both,) = kubelet.allocate([f"{GPU_A}-s1", f"{GPU_B}-s0"]).container_responses
    assert both.envs["POD"] == "two"
    assert both.envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU_A},{GPU_B}"
    assert both.envs["TESSERA_SLICE_MEMORY_MIB"] == "1024,2048"
    assert both.envs["TESSERA_SLICE_COMPUTE_PCT"] == "10,12.5"
    assert pods.marked == [("ns", "older"), ("ns", "newer"), ("ns", "two")]


def test_allocate_names_a_mig_instance_and_splits_slices_over_containers(
    plugin: DevicePlugin, kubelet: FakeKubelet, pods: InMemoryPodSource
) -> None:
    pods.add(NODE, make_pod("mig", (GPU_A, 10240, 100.0), mig=MIG))
    (mig,) = kubelet.allocate(["d0"]).container_responses
    assert mig.envs["NVIDIA_VISIBLE_DEVICES"] == MIG

    pods.add(NODE, make_pod("pair", (GPU_A, 1000, 20.0), (GPU_B, 2000, 30.0)))
    first, second = kubelet.allocate(["d0"], ["d1"]).container_responses
    assert (first.envs["NVIDIA_VISIBLE_DEVICES"], first.envs["TESSERA_SLICE_MEMORY_MIB"]) == (GPU_A, "1000")
    assert (second.envs["NVIDIA_VISIBLE_DEVICES"], second.envs["TESSERA_SLICE_MEMORY_MIB"]) == (GPU_B, "2000")


def test_allocate_without_a_matching_pod_fails_with_the_reason(
    plugin: DevicePlugin, kubelet: FakeKubelet, pods: InMemoryPodSource
) -> None:
    pods.add(NODE, make_pod("one", (GPU_A, 1024, 10.0)))
    with pytest.raises(grpc.RpcError) as info:
        kubelet.allocate(["d0", "d1"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"no pod on node {NODE} is waiting for 2 tessera.io/slice" in info.value.details()
    assert pods.marked == []

    pods.add(NODE, PodInfo("ns", "broken", "uid-broken", {names.ALLOCATION: names.ALLOCATING}, slice_count=2))
    with pytest.raises(grpc.RpcError) as info:
        kubelet.allocate(["d0", "d1"])
    assert "pod ns/broken: no tessera.io/binding annotation" in info.value.details()
    assert pods.marked == []


class SlowPodSource(InMemoryPodSource):
    """Reads and writes that take a while, as over the API server: widens any race between Allocates."""

    def allocating_pods(self, node: str) -> list[PodInfo]:
        listed = super().allocating_pods(node)
        time.sleep(0.002)
        return listed

    def mark_allocated(self, namespace: str, name: str) -> None:
        time.sleep(0.002)
        super().mark_allocated(namespace, name)


class LaggingPodSource(InMemoryPodSource):
    """A cache that has not seen the "allocated" marks yet: lists pods as they were added."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[PodInfo] = []

    def add(self, node: str, pod: PodInfo) -> None:
        super().add(node, pod)
        self.listed.append(pod)

    def allocating_pods(self, node: str) -> list[PodInfo]:
        return list(self.listed)


@pytest.mark.parametrize("source", [SlowPodSource, LaggingPodSource])
def test_concurrent_allocates_never_hand_out_a_pod_twice(
    plugin_dir: Path, kubelet: FakeKubelet, source: type[InMemoryPodSource]
) -> None:
    pods = source()
    for i in range(12):
        pods.add(NODE, make_pod(f"p{i:02d}", (GPU_A, 100, 5.0), bound_at=float(i % 3)))
    plugin = new_plugin(plugin_dir, pods)
    plugin.start()
    try:
        kubelet.wait_for(registered(1))
        kubelet.wait_for(lambda k: k.options() is not None)
        got: list[str] = []
        failed: list[str] = []
        lock = threading.Lock()

        def call() -> None:
            try:
                (response,) = kubelet.allocate(["d0"]).container_responses
                with lock:
                    got.append(response.envs["POD"])
            except grpc.RpcError as e:
                with lock:
                    failed.append(e.details() or "")

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == [f"p{i:02d}" for i in range(12)]
        assert len(failed) == 4 and all("no pod on node" in f for f in failed)
        assert sorted(pods.marked) == [("ns", f"p{i:02d}") for i in range(12)]
    finally:
        plugin.stop()


@pytest.mark.parametrize("clean", [True, False], ids=["sockets-removed", "kubelet-sock-only"])
def test_reregisters_when_the_kubelet_restarts(
    plugin: DevicePlugin, kubelet: FakeKubelet, pods: InMemoryPodSource, clean: bool
) -> None:
    kubelet.restart(clean=clean)
    kubelet.wait_for(lambda k: len(k.registrations) == 2 and len(k.device_updates) >= 2)
    assert kubelet.registrations[1].endpoint == PLUGIN_SOCKET
    assert (kubelet.dir / PLUGIN_SOCKET).exists()
    pods.add(NODE, make_pod("after", (GPU_A, 1024, 10.0)))
    (response,) = kubelet.allocate(["d0"]).container_responses
    assert response.envs["POD"] == "after"


def test_registers_once_the_kubelet_comes_up(plugin_dir: Path, pods: InMemoryPodSource) -> None:
    plugin = new_plugin(plugin_dir, pods)
    plugin.start()
    kubelet = FakeKubelet(plugin_dir)
    try:
        assert (plugin_dir / PLUGIN_SOCKET).exists()
        kubelet.start()
        kubelet.wait_for(lambda k: len(k.registrations) == 1 and len(k.device_updates) == 1)
    finally:
        plugin.stop()
        kubelet.stop()


def test_pick_pod_orders_by_bound_at_then_name() -> None:
    a = make_pod("a", (GPU_A, 1, 1.0), bound_at=5.0)
    b = make_pod("b", (GPU_A, 1, 1.0), bound_at=5.0)
    old = make_pod("old", (GPU_A, 1, 1.0), bound_at=1.0)
    undated = make_pod("undated", (GPU_A, 1, 1.0), bound_at=None)
    assert pick_pod([b, a, undated], 1) == a
    assert pick_pod([b, a, old], 1) == old
    assert pick_pod([b, a, old], 1, exclude={old.uid}) == a
    assert pick_pod([undated], 1) == undated
    assert pick_pod([a], 2) is None


def test_slice_request_count_sums_container_limits() -> None:
    spec = {
        "containers": [
            {"resources": {"limits": {names.SLICE_RESOURCE: "2", "cpu": "1"}}},
            {"resources": {"requests": {"cpu": "1"}}},
            {"resources": {"limits": {names.SLICE_RESOURCE: 1}}},
        ]
    }
    assert slice_request_count(spec) == 3
    pod = PodInfo.from_pod({"metadata": {"name": "x", "namespace": "n", "uid": "u"}, "spec": spec})
    assert (pod.namespace, pod.name, pod.uid, pod.slice_count) == ("n", "x", "u", 3)


def test_a_binding_without_gpus_hides_every_gpu() -> None:
    assert slice_env([SliceBinding(memory_mib=0, compute_pct=0.0)]) == {"NVIDIA_VISIBLE_DEVICES": "void"}


def test_preferred_allocation_keeps_the_required_devices_then_fills_in_order(plugin: DevicePlugin) -> None:
    request = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=["a", "b", "c", "d"], must_include_deviceIDs=["c"], allocation_size=3
            )
        ]
    )
    (response,) = plugin.GetPreferredAllocation(request, None).container_responses
    assert list(response.deviceIDs) == ["c", "a", "b"]


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    # the stubs' text depends on the generator's version: compare only with the one that made them
    tools = importlib.metadata.version("grpcio-tools")
    if tools != api_pb2_grpc.GRPC_GENERATED_VERSION:
        pytest.skip(
            f"grpcio-tools {tools} installed; the stubs come from {api_pb2_grpc.GRPC_GENERATED_VERSION}"
        )
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(ROOT / "scripts" / "gen-deviceplugin"), str(tmp_path)], check=True, env=env)
    generated = ROOT / "tessera" / "kube" / "deviceplugin"
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        assert (tmp_path / name).read_bytes() == (generated / name).read_bytes(), (
            f"{name} is stale: run scripts/gen-deviceplugin"
        )
