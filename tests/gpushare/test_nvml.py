"""The NVML backend's real code paths, run against `fake_pynvml` installed as the ``pynvml`` module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.gpushare import DeviceUnavailable, GpuLost, open_backend
from tessera.gpushare.nvml import NvmlBackend, mig_profile, pci_bus_id
from tests.gpushare import fake_pynvml as fake
from tests.gpushare.fake_pynvml import FakeGpu, FakeLink, FakeMig

GIB = 1024**3
T0 = 1_700_000_000_000_000  # microseconds since the epoch, as NVML stamps samples


def two_gpus() -> list[FakeGpu]:
    """GPU 0 and 1 joined by NVLink on NUMA nodes 0 and 1; GPU 1 in MIG mode with two instances."""
    gpu0 = FakeGpu(
        uuid="GPU-aaaa",
        name="NVIDIA H100 80GB HBM3",
        memory_mib=81559,
        bus_id="00000000:07:00.0",
        sm_count=132,
        numa_node=0,
        links=[FakeLink("00000000:08:00.0"), FakeLink("00000000:08:00.0"), FakeLink("0:0:0", active=False)],
        processes=[(100, 2 * GIB), (101, None), (102, GIB + 1)],
        samples=[(100, T0 + 10, 40), (100, T0 + 20, 60), (101, T0 + 20, 10)],
        utilization=55,
    )
    gpu1 = FakeGpu(
        uuid="GPU-bbbb",
        name="NVIDIA H100 80GB HBM3",
        memory_mib=81559,
        bus_id="00000000:08:00.0",
        numa_node=None,  # not reported by NVML: read from sysfs
        links=[FakeLink("00000000:07:00.0")],
        mig_mode=True,
        migs={
            0: FakeMig(
                "MIG-1111",
                "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                9984,
                gpu_instance_id=9,
                compute_instance_id=0,
            ),
            3: FakeMig("MIG-2222", "NVIDIA MIG device", 40448, 2, 0, gpu_slices=3, compute_slices=3),
        },
        processes=[(200, 3 * GIB)],
        utilization=None,  # MIG mode: the driver reports no device utilisation
    )
    return [gpu0, gpu1]


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    node = tmp_path / "bus/pci/devices/0000:08:00.0"
    node.mkdir(parents=True)
    (node / "numa_node").write_text("1\n")
    return tmp_path


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch, sysfs: Path) -> Iterator[NvmlBackend]:
    fake.reset(two_gpus())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backend = NvmlBackend(sysfs=sysfs)
    yield backend
    backend.close()


def test_inventory_reads_topology_numa_and_mig(nvml: NvmlBackend) -> None:
    inv = nvml.inventory()
    assert (inv.driver_version, inv.cuda_version, inv.lost, inv.simulated) == ("550.54.15", "12.4", (), False)
    gpu0, gpu1 = inv.gpus
    assert (gpu0.uuid, gpu0.index, gpu0.model, gpu0.memory_mib) == (
        "GPU-aaaa",
        0,
        "NVIDIA H100 80GB HBM3",
        81559,
    )
    assert gpu0.sm_count == 132 and gpu1.sm_count == 132
    assert gpu0.nvlink_peers == ("GPU-bbbb",) and gpu1.nvlink_peers == ("GPU-aaaa",)
    assert (gpu0.numa_node, gpu1.numa_node) == (0, 1)
    assert (gpu0.mig_mode, gpu0.mig_instances) == (False, ())
    assert gpu1.mig_mode
    assert [
        (m.uuid, m.profile, m.memory_mib, m.gpu_instance_id, m.compute_instance_id)
        for m in gpu1.mig_instances
    ] == [
        ("MIG-1111", "1g.10gb", 9984, 9, 0),
        ("MIG-2222", "3g.40gb", 40448, 2, 0),
    ]
    api = gpu1.to_api()
    assert api.mig_instances[1].profile == "3g.40gb" and api.nvlink_peers == ["GPU-aaaa"]


def test_numa_unknown_when_neither_nvml_nor_sysfs_say(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gpus = two_gpus()
    fake.reset(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = NvmlBackend(sysfs=tmp_path).inventory()
    assert [g.numa_node for g in inv.gpus] == [0, None]


def test_nvswitch_makes_every_switched_gpu_a_peer(monkeypatch: pytest.MonkeyPatch, sysfs: Path) -> None:
    switch = FakeLink("00000000:ff:00.0", remote_type=fake.NVML_NVLINK_DEVICE_TYPE_SWITCH)
    gpus = [
        FakeGpu(f"GPU-{i}", "NVIDIA H200", 143771, f"00000000:0{i}:00.0", links=[switch]) for i in range(3)
    ]
    gpus.append(FakeGpu("GPU-pcie", "NVIDIA L4", 23034, "00000000:09:00.0"))
    fake.reset(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    peers = {g.uuid: g.nvlink_peers for g in NvmlBackend(sysfs=sysfs).inventory().gpus}
    assert peers == {
        "GPU-0": ("GPU-1", "GPU-2"),
        "GPU-1": ("GPU-0", "GPU-2"),
        "GPU-2": ("GPU-0", "GPU-1"),
        "GPU-pcie": (),
    }


def test_processes_memory_with_unknown_amounts(nvml: NvmlBackend) -> None:
    procs = nvml.processes("GPU-aaaa")
    assert [(p.pid, p.used_mib) for p in procs] == [(100, 2048), (101, None), (102, 1025)]
    assert [p.pid for p in nvml.processes("MIG-1111")] == [200]


def test_process_utilization_carries_the_last_timestamp(nvml: NvmlBackend) -> None:
    first = nvml.process_utilization("GPU-aaaa")
    assert first.supported
    assert {s.pid: (s.sm_pct, s.timestamp) for s in first.samples} == {
        100: (50.0, (T0 + 20) / 1e6),
        101: (10.0, (T0 + 20) / 1e6),
    }
    assert first.newest == (T0 + 20) / 1e6
    assert "nvmlDeviceGetProcessesUtilizationInfo" in fake.CALLS
    assert "nvmlDeviceGetProcessUtilization" not in fake.CALLS
    # Nothing newer: NVML answers NOT_FOUND, which is "no samples", and `since` is kept.
    again = nvml.process_utilization("GPU-aaaa", since=first.newest)
    assert (again.samples, again.newest, again.supported) == ((), first.newest, True)
    fake.MACHINE.gpus[0].samples.append((300, T0 + 30, 70))
    third = nvml.process_utilization("GPU-aaaa", since=first.newest)
    assert [(s.pid, s.sm_pct) for s in third.samples] == [(300, 70.0)] and third.newest == (T0 + 30) / 1e6


def test_falls_back_to_process_utilization_when_info_is_missing(
    nvml: NvmlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(fake, "nvmlDeviceGetProcessesUtilizationInfo")
    first = nvml.process_utilization("GPU-aaaa", since=(T0 + 10) / 1e6)
    assert [(s.pid, s.sm_pct) for s in first.samples] == [(100, 60.0), (101, 10.0)]
    assert fake.CALLS.count("nvmlDeviceGetProcessUtilization") == 1
    assert nvml.process_utilization("GPU-aaaa", since=first.newest).samples == ()


def test_falls_back_when_the_driver_lacks_the_newer_function(
    nvml: NvmlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(handle: object, stamp: int) -> list[object]:
        raise fake.NVMLError(fake.NVML_ERROR_FUNCTION_NOT_FOUND)

    monkeypatch.setattr(fake, "nvmlDeviceGetProcessesUtilizationInfo", missing)
    samples = nvml.process_utilization("GPU-aaaa")
    assert [s.pid for s in samples.samples] == [100, 101]
    assert "nvmlDeviceGetProcessUtilization" in fake.CALLS


def test_mig_mode_gpu_reports_no_utilisation_rather_than_zero(nvml: NvmlBackend) -> None:
    assert nvml.device_utilization("GPU-aaaa") == 55.0
    assert nvml.device_utilization("GPU-bbbb") is None
    samples = nvml.process_utilization("GPU-bbbb", since=12.5)
    assert (samples.samples, samples.newest, samples.supported) == ((), 12.5, False)


def test_gpu_lost_mid_read_is_reported_and_the_others_still_read(nvml: NvmlBackend) -> None:
    fake.MACHINE.gpus[1].lost_after = 3  # handle, uuid and memory read; then it falls off the bus
    inv = nvml.inventory()
    assert [g.uuid for g in inv.gpus] == ["GPU-aaaa"] and inv.lost == (1,)
    assert inv.gpus[0].nvlink_peers == ()  # the peer is gone
    with pytest.raises(GpuLost) as lost:
        nvml.processes("GPU-bbbb")
    assert lost.value.gpu == "GPU-bbbb"
    assert [p.pid for p in nvml.processes("GPU-aaaa")] == [100, 101, 102]


def test_gpu_lost_after_inventory_and_unknown_uuid(nvml: NvmlBackend) -> None:
    nvml.inventory()
    fake.MACHINE.gpus[0].lost_after = 0
    for read in (nvml.processes, nvml.process_utilization, nvml.device_utilization):
        with pytest.raises(GpuLost, match="GPU-aaaa"):
            read("GPU-aaaa")
    with pytest.raises(GpuLost, match="no GPU"):
        nvml.processes("GPU-nope")


def test_only_reads(nvml: NvmlBackend) -> None:
    nvml.inventory()
    for uuid in ("GPU-aaaa", "GPU-bbbb"):
        nvml.processes(uuid)
        nvml.process_utilization(uuid)
        nvml.device_utilization(uuid)
    nvml.close()
    reads = ("nvmlInit", "nvmlShutdown", "nvmlSystemGet", "nvmlDeviceGet")
    assert fake.CALLS and all(call.startswith(reads) for call in fake.CALLS), set(fake.CALLS)
    assert fake.CALLS.count("nvmlInit") == 1 and fake.CALLS.count("nvmlShutdown") == 1
    with pytest.raises(DeviceUnavailable, match="closed"):
        nvml.processes("GPU-aaaa")


def test_library_missing_is_device_unavailable_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(DeviceUnavailable, match="pip install"):
        open_backend("nvml")
    with pytest.raises(DeviceUnavailable, match="pip install"):
        open_backend("auto")


def test_driver_missing_is_device_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset([], init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(DeviceUnavailable, match="driver"):
        open_backend("nvml")


def test_factory_opens_nvml_and_names_the_valid_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset(two_gpus())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backend = open_backend("auto")
    assert backend.kind == "nvml" and len(backend.inventory().gpus) == 2
    backend.close()
    with pytest.raises(ValueError, match="auto, nvml, simulated"):
        open_backend("cuda")


@pytest.mark.parametrize(
    ("name", "slices", "memory", "want"),
    [
        ("NVIDIA H200 MIG 1g.18gb", (1, 1), 16384, "1g.18gb"),
        ("NVIDIA A100-SXM4-80GB MIG 1c.2g.20gb", (2, 1), 19968, "1c.2g.20gb"),
        ("NVIDIA H100 MIG 1g.20gb+me", (1, 1), 19968, "1g.20gb+me"),
        ("MIG device", (7, 7), 80896, "7g.79gb"),
        ("MIG device", (4, 2), 40192, "2c.4g.39gb"),
    ],
)
def test_mig_profile_from_name_else_slices(
    name: str, slices: tuple[int, int], memory: int, want: str
) -> None:
    from types import SimpleNamespace

    attrs = SimpleNamespace(
        gpuInstanceSliceCount=slices[0], computeInstanceSliceCount=slices[1], memorySizeMB=memory
    )
    assert mig_profile(name, attrs) == want


def test_pci_bus_id_matches_sysfs_spelling() -> None:
    assert pci_bus_id(b"00000000:07:00.0") == "0000:07:00.0"
    assert pci_bus_id("00000001:B3:00.0\0") == "0001:b3:00.0"
    assert pci_bus_id("0000:07:00.0") == "0000:07:00.0"


def test_an_empty_read_that_pynvml_raises_as_success_is_no_samples(
    nvml: NvmlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynvml raises NVMLError(NVML_SUCCESS) when the sizing call finds no process at all.
    def empty(handle: object, stamp: int) -> list[object]:
        raise fake.NVMLError(fake.NVML_SUCCESS)

    monkeypatch.setattr(fake, "nvmlDeviceGetProcessesUtilizationInfo", empty)
    samples = nvml.process_utilization("GPU-aaaa", since=5.0)
    assert (samples.samples, samples.newest, samples.supported) == ((), 5.0, True)
    assert "nvmlDeviceGetProcessUtilization" not in fake.CALLS
