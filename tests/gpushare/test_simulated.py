"""The simulated device in this process: inventory, the helper's ledger and token, lost GPUs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tessera.gpushare import GpuLost, open_backend
from tessera.gpushare.simhelper import STATE_DIR_ENV, SimGpu, SimGpuError, SimOutOfMemory
from tessera.gpushare.simulated import SimulatedBackend
from tessera.node.procs import proc_start_time


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend("1xA100-80GB,1xT4-16GB", state_dir=tmp_path / "sim", node="n1")


def test_inventory_from_the_spec(sim: SimulatedBackend) -> None:
    inv = sim.inventory()
    assert inv.simulated and inv.lost == ()
    assert [(g.uuid, g.index, g.model, g.memory_mib) for g in inv.gpus] == [
        ("SIM-n1-0", 0, "A100-80GB", 81920),
        ("SIM-n1-1", 1, "T4-16GB", 16384),
    ]
    assert inv.gpus[0].to_api(simulated=True).simulated
    devices = json.loads((sim.state_dir / "devices.json").read_text())
    assert [d["uuid"] for d in devices["gpus"]] == ["SIM-n1-0", "SIM-n1-1"]


def test_factory_needs_a_spec_and_a_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="spec"):
        open_backend("simulated")
    monkeypatch.delenv("TESSERA_SIM_DEVICE_DIR", raising=False)
    with pytest.raises(ValueError, match="TESSERA_SIM_DEVICE_DIR"):
        open_backend("simulated", simulate="1xT4-16GB")
    monkeypatch.setenv("TESSERA_SIM_DEVICE_DIR", str(tmp_path))
    backend = open_backend("auto", simulate="1xT4-16GB", node="x")
    assert backend.kind == "simulated" and [g.uuid for g in backend.inventory().gpus] == ["SIM-x-0"]
    with pytest.raises(ValueError, match="simulate_gpus"):
        open_backend("simulated", simulate="two T4s", state_dir=tmp_path)


def test_workload_picks_its_gpu_like_cuda(sim: SimulatedBackend) -> None:
    env = sim.workload_env()
    assert env == {STATE_DIR_ENV: str(sim.state_dir)}
    for visible, want in [("SIM-n1-1", "SIM-n1-1"), ("SIM-n1-1,SIM-n1-0", "SIM-n1-1"), ("1", "SIM-n1-1")]:
        with SimGpu.from_env({**env, "CUDA_VISIBLE_DEVICES": visible}) as gpu:
            assert gpu.uuid == want
    with SimGpu.from_env(env) as gpu:
        assert gpu.uuid == "SIM-n1-0"  # unset: every GPU visible, the first one used
    with pytest.raises(SimGpuError, match="empty"):
        SimGpu.from_env({**env, "CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(SimGpuError, match="GPU-real"):
        SimGpu.from_env({**env, "CUDA_VISIBLE_DEVICES": "GPU-real"})
    with pytest.raises(SimGpuError, match=STATE_DIR_ENV):
        SimGpu.from_env({"CUDA_VISIBLE_DEVICES": "SIM-n1-0"})


def test_ledger_records_memory_and_forgets_it_on_close(sim: SimulatedBackend) -> None:
    gpu = SimGpu(sim.state_dir, "SIM-n1-1")
    with pytest.raises(SimGpuError, match="already has a context"):
        SimGpu(sim.state_dir, "SIM-n1-1")
    gpu.allocate(1000)
    gpu.allocate(24)
    assert [(p.pid, p.used_mib) for p in sim.processes("SIM-n1-1")] == [(gpu.pid, 1024)]
    assert sim.processes("SIM-n1-0") == []
    gpu.free(512)
    assert sim.processes("SIM-n1-1")[0].used_mib == 512
    with pytest.raises(SimOutOfMemory, match="15872 MiB free"):
        gpu.allocate(16384)  # the GPU's physical memory, not any slice limit
    gpu.close()
    assert sim.processes("SIM-n1-1") == []
    with pytest.raises(SimGpuError, match="closed"):
        gpu.allocate(1)


def test_records_of_dead_processes_are_ignored_and_removed(sim: SimulatedBackend) -> None:
    start = proc_start_time(1)
    assert start is not None
    procs = sim.state_dir / "gpus" / "SIM-n1-0" / "procs"
    stale = procs / "1-1.json"  # pid 1 exists, but not with start time 1: a reused pid
    record = {"pid": 1, "start_time": start + 1, "gpu": "SIM-n1-0", "used_mib": 4096, "busy_ns": 0}
    stale.write_text(json.dumps({**record, "intervals": [], "running_since": None, "updated_ns": 0}))
    (procs / "junk.json").write_text("{not json")
    half_written = procs / f".1-{start + 1}.json.1.tmp"
    half_written.write_text('{"pid": 1, "sta')
    assert sim.processes("SIM-n1-0") == []
    assert not stale.exists() and not half_written.exists()


def test_kernel_time_is_measured_per_process_and_on_the_device(sim: SimulatedBackend) -> None:
    with SimGpu(sim.state_dir, "SIM-n1-0") as gpu:
        since = time.time()
        busy = gpu.kernel(0.3)
        assert busy >= 0.3
        samples = sim.process_utilization("SIM-n1-0", since)
        (mine,) = samples.samples
        assert mine.pid == gpu.pid and 70 <= mine.sm_pct <= 100
        assert samples.newest is not None and samples.newest >= since + 0.3
        assert 20 <= sim.device_utilization("SIM-n1-0") <= 45  # 0.3 s of the last second
        later = sim.process_utilization("SIM-n1-0", samples.newest)
        assert later.samples[0].sm_pct < 50  # the kernel ended before this window began


def test_a_running_kernel_counts_before_it_ends(sim: SimulatedBackend) -> None:
    with SimGpu(sim.state_dir, "SIM-n1-0") as gpu:
        since = time.time()
        worker = threading.Thread(target=gpu.kernel, args=(0.6,))
        worker.start()
        time.sleep(0.3)
        pct = sim.process_utilization("SIM-n1-0", since).samples[0].sm_pct
        worker.join()
        assert pct >= 60


def test_lost_gpu_raises_for_readers_and_workloads(sim: SimulatedBackend) -> None:
    gpu = SimGpu(sim.state_dir, "SIM-n1-1")
    sim.lose_gpu("SIM-n1-1")
    inv = sim.inventory()
    assert [g.uuid for g in inv.gpus] == ["SIM-n1-0"] and inv.lost == (1,)
    for read in (sim.processes, sim.process_utilization, sim.device_utilization):
        with pytest.raises(GpuLost) as lost:
            read("SIM-n1-1")
        assert lost.value.gpu == "SIM-n1-1"
    with pytest.raises(SimGpuError, match="fallen off the bus"):
        gpu.kernel(0.01)
    with pytest.raises(SimGpuError, match="fallen off the bus"):
        SimGpu(sim.state_dir, "SIM-n1-1")
    sim.restore_gpu("SIM-n1-1")
    assert [p.pid for p in sim.processes("SIM-n1-1")] == [gpu.pid]
    gpu.close()
    with pytest.raises(GpuLost, match="no such"):
        sim.processes("SIM-n1-9")


def test_reopening_keeps_running_workloads(sim: SimulatedBackend) -> None:
    with SimGpu(sim.state_dir, "SIM-n1-0") as gpu:
        gpu.allocate(100)
        again = SimulatedBackend("1xA100-80GB,1xT4-16GB", state_dir=sim.state_dir, node="n1")
        assert [(p.pid, p.used_mib) for p in again.processes("SIM-n1-0")] == [(gpu.pid, 100)]
