"""The enforcer over real processes on the simulated device, and over a device that fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tessera.gpushare import resumer
from tessera.gpushare.attribution import read_proc
from tessera.gpushare.device import (
    DeviceError,
    DeviceInventory,
    DeviceUnavailable,
    GpuInfo,
    GpuLost,
    ProcessMemory,
    ProcessSample,
    ProcessSamples,
)
from tessera.gpushare.enforce import EnforcementEvent, Enforcer, EnforcerConfig, SliceSpec
from tessera.gpushare.signals import StopLedger
from tessera.gpushare.simulated import SimulatedBackend
from tessera.gpushare.tiers import NodeProbe
from tessera.node.procs import proc_start_time

GPU = "SIM-n1-0"
# a stand-in for the task's shim: the parent every process of the task descends from
SHIM = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
HOLD = """
import signal, sys, time
from tessera.gpushare.simhelper import SimGpu
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
gpu = SimGpu.from_env()
gpu.allocate(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(120)
"""


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Procs:
    sim: SimulatedBackend
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def hold(self, mib: int, *, stubborn: bool = False, shim: bool = True, **env: str) -> tuple[int, int]:
        """A process holding `mib` on the GPU; returns its shim's (pid, start) (or its own, shim-less)."""
        argv = [sys.executable, "-c", HOLD, str(mib), "stubborn" if stubborn else "polite"]
        full_env = {**os.environ, **self.sim.workload_env(), "CUDA_VISIBLE_DEVICES": GPU, **env}
        proc = subprocess.Popen(
            [sys.executable, "-c", SHIM, *argv] if shim else argv,
            env=full_env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        start = proc_start_time(proc.pid)
        assert start is not None
        return proc.pid, start

    def stop_all(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend("1xA100-80GB", state_dir=tmp_path / "sim", node="n1")


@pytest.fixture
def procs(sim: SimulatedBackend) -> Iterator[Procs]:
    p = Procs(sim)
    yield p
    p.stop_all()


def slice_on(slice_id: str, shim: tuple[int, int], **kw: object) -> SliceSpec:
    return SliceSpec(slice_id=slice_id, gpu_uuid=GPU, memory_mib=4096, compute_pct=50, shim=shim, **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    info = read_proc(pid)
    return info is not None and info.state not in ("Z", "X")


def test_over_its_memory_a_slice_is_stopped_and_a_forged_slice_id_decides_nothing(
    sim: SimulatedBackend, procs: Procs
) -> None:
    victim = procs.hold(2048)
    # the greedy task claims to be its neighbour's slice, and ignores SIGTERM
    greedy = procs.hold(6144, stubborn=True, TESSERA_SLICE_ID="victim")
    stray = procs.hold(512, shim=False, TESSERA_SLICE_ID="victim")
    events: list[EnforcementEvent] = []
    killed: list[str] = []
    clock = Clock()
    config = EnforcerConfig(memory_grace_seconds=2, unattributed="kill", unattributed_grace_seconds=1)
    enforcer = Enforcer(
        sim,
        config,
        emit=events.append,
        on_kill=lambda spec, message: killed.append(f"{spec.slice_id}: {message}"),
        clock=clock,
        probe=NodeProbe,
    )
    specs = [slice_on("victim", victim), slice_on("greedy", greedy)]
    enforcer.poll(specs)
    assert killed == [f"greedy: used 6144 MiB of its 4096 MiB slice on {GPU}"]
    assert [(e.reason, e.slice_id) for e in events] == [("SliceMemoryExceeded", "greedy")]
    status = {s.spec.slice_id: s for s in enforcer.snapshot.slices}
    assert (status["victim"].used_mib, status["victim"].state) == (2048, "ok")
    assert (status["greedy"].used_mib, status["greedy"].state) == (6144, "stopping")
    assert [(s.pid, s.hint) for s in enforcer.snapshot.gpus[0].strays] == [(stray[0], "victim")]
    clock.now += 1.5  # the stray has been seen for longer than its grace: reported, then SIGTERM
    enforcer.poll(specs)
    assert [e.reason for e in events[1:]] == ["UnattributedProcess", "UnattributedProcessKilled"]
    assert "claims slice victim, which decides nothing" in events[1].message
    clock.now += 1.0  # past the memory grace: the task that ignored SIGTERM gets SIGKILL
    enforcer.poll(specs)
    greedy_child = [p.pid for p in sim.processes(GPU) if p.used_mib == 6144]
    deadline = time.monotonic() + 10
    while greedy_child and alive(greedy_child[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not greedy_child or not alive(greedy_child[0])
    assert alive(victim[0]) and [p.used_mib for p in sim.processes(GPU)] == [2048]
    assert not any(e.slice_id == "victim" for e in events)


class FlakyDevice:
    """A device backend that fails on demand, the ways NVML does."""

    kind = "nvml"
    simulated = False
    supports_driver_memory_limits = False

    def __init__(self) -> None:
        self.unavailable = False
        self.lost: set[str] = set()
        self.broken: set[str] = set()
        self.listed: dict[str, list[ProcessMemory]] = {"GPU-a": [], "GPU-b": []}

    def inventory(self) -> DeviceInventory:
        if self.unavailable:
            raise DeviceUnavailable("NVML: Driver Not Loaded")
        gpus = tuple(
            GpuInfo(uuid=u, index=i, model="H200", memory_mib=144000) for i, u in enumerate(self.listed)
        )
        return DeviceInventory(driver_version="570.1", cuda_version="12.8", gpus=gpus)

    def _check(self, uuid: str) -> None:
        if self.unavailable:
            raise DeviceUnavailable("NVML: Driver Not Loaded")
        if uuid in self.lost:
            raise GpuLost(uuid, "nvmlDeviceGetComputeRunningProcesses: GPU is lost")
        if uuid in self.broken:
            raise DeviceError(f"GPU {uuid}: the driver does not list compute processes")

    def processes(self, gpu_uuid: str) -> list[ProcessMemory]:
        self._check(gpu_uuid)
        return self.listed[gpu_uuid]

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples:
        self._check(gpu_uuid)
        return ProcessSamples(samples=(), newest=None, supported=False)

    def device_utilization(self, gpu_uuid: str) -> float | None:
        self._check(gpu_uuid)
        return None

    def workload_env(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


def test_device_errors_are_reported_never_fatal() -> None:
    device = FlakyDevice()
    events: list[EnforcementEvent] = []
    clock = Clock()
    enforcer = Enforcer(
        device, EnforcerConfig(inventory_seconds=0), emit=events.append, clock=clock, probe=NodeProbe
    )
    device.unavailable = True  # the library is there, the driver is not (yet)
    for _ in range(3):
        enforcer.poll([])
    assert [e.reason for e in events] == ["DeviceUnavailable"]  # once, not every poll
    assert enforcer.snapshot.device_error == "NVML: Driver Not Loaded"
    device.unavailable = False
    # GPU-a lists a process that exited before it could be read: it is simply not there
    device.listed["GPU-a"] = [ProcessMemory(pid=2**22 + 12345, used_mib=100)]
    device.lost = {"GPU-b"}
    enforcer.poll([])
    enforcer.poll([])
    assert [e.reason for e in events[1:]] == ["DeviceRecovered", "GpuLost"]
    gpus = {g.info.uuid: g for g in enforcer.snapshot.gpus}
    assert gpus["GPU-b"].lost and not gpus["GPU-a"].lost and gpus["GPU-a"].strays == ()
    device.lost, device.broken = set(), {"GPU-a"}
    enforcer.poll([])
    assert events[-1].reason == "GpuRecovered" and not enforcer.snapshot.gpus[1].lost
    assert enforcer.snapshot.gpus[0].used_mib is None  # could not be read: unknown, not zero


def test_a_lost_simulated_gpu_is_reported_and_its_slices_are_not_held(
    sim: SimulatedBackend, procs: Procs
) -> None:
    holder = procs.hold(1024)
    events: list[EnforcementEvent] = []
    enforcer = Enforcer(sim, emit=events.append, probe=NodeProbe)
    spec = slice_on("s", holder, compute_policy="strict")
    enforcer.poll([spec])
    sim.lose_gpu(GPU)
    enforcer.poll([spec])
    assert [e.reason for e in events] == ["GpuLost"]
    (status,) = enforcer.snapshot.slices
    assert status.used_mib is None and enforcer.snapshot.gpus[0].lost
    assert not enforcer.ledger.stopped("s")
    sim.restore_gpu(GPU)
    enforcer.poll([spec])
    assert events[-1].reason == "GpuRecovered" and enforcer.snapshot.slices[0].used_mib == 1024


def test_nothing_stopped_outlives_the_agent(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = proc_start_time(sleeper.pid)
        assert start is not None
        ledger_path = tmp_path / "stopped.json"
        ledger = StopLedger(ledger_path)
        watcher = resumer.start(ledger_path)
        assert ledger.stop("s", [(sleeper.pid, start)]) == 1
        assert _reaches(sleeper.pid, "T") and ledger_path.read_text().count(str(sleeper.pid)) == 1
        # the agent dies without resuming anything: its end of the pipe closes, the watcher resumes
        assert watcher.stdin is not None
        watcher.stdin.close()
        watcher.wait(timeout=20)
        assert _reaches(sleeper.pid, "SR")
        # a ledger a crashed agent left behind is resumed by the next one at start-up
        os.kill(sleeper.pid, signal.SIGSTOP)
        assert _reaches(sleeper.pid, "T")
        assert StopLedger(ledger_path).recover() == 1 and _reaches(sleeper.pid, "SR")
    finally:
        sleeper.kill()
        sleeper.wait()


def _reaches(pid: int, states: str, timeout: float = 5) -> bool:
    """Whether `pid` is in one of `states` (e.g. "T", stopped) within `timeout`: signals take a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_proc(pid)
        if info is not None and info.state in states:
            return True
        time.sleep(0.01)
    return False


class BusyDevice(FlakyDevice):
    """One GPU whose listed processes run kernels all the time."""

    kind = "simulated"

    def __init__(self, pids: list[int]) -> None:
        super().__init__()
        self.listed = {"GPU-a": [ProcessMemory(pid, 100) for pid in pids]}

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples:
        now = time.time()
        return ProcessSamples(tuple(ProcessSample(p.pid, 100.0, now) for p in self.listed[gpu_uuid]), now)


def test_a_strict_slice_is_stopped_over_its_share_and_resumed_when_released(tmp_path: Path) -> None:
    shim = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (kids := Path(f"/proc/{shim.pid}/task/{shim.pid}/children").read_text().split()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child = int(kids[0])
        start = proc_start_time(shim.pid)
        assert start is not None
        events: list[EnforcementEvent] = []
        ledger = StopLedger(tmp_path / "stopped.json")
        enforcer = Enforcer(BusyDevice([child]), ledger=ledger, emit=events.append, probe=NodeProbe)
        spec = SliceSpec("s", "GPU-a", 4096, 10, (shim.pid, start), compute_policy="strict")
        for _ in range(5):  # alone, but strict: 100 % busy on a 10 % share runs out of credit
            enforcer.poll([spec])
            time.sleep(0.05)
        assert _reaches(child, "T") and ledger.stopped("s")
        assert [e.reason for e in events] == ["Throttled"] and "10% compute share" in events[0].message
        assert enforcer.snapshot.slices[0].state == "throttled"
        enforcer.poll([])  # the slice is released (its task ended or was cancelled)
        assert _reaches(child, "SR") and not ledger.stopped("s")
        gang = SliceSpec(
            "g", "GPU-a", 4096, 10, (shim.pid, start), compute_policy="strict", may_throttle=False
        )
        for _ in range(5):
            enforcer.poll([gang])
            time.sleep(0.05)
        assert not ledger.stopped("g") and enforcer.snapshot.slices[0].tier.compute == "measure"
    finally:
        os.killpg(shim.pid, signal.SIGKILL)
        shim.wait()


def test_a_pods_processes_are_attributed_by_its_cgroup(sim: SimulatedBackend, procs: Procs) -> None:
    """Where the kubelet starts the task there is no shim: the pod's cgroup decides (here the test's
    own cgroup stands in for the pod's; the slice's shim is a pid that does not exist)."""
    from tessera.gpushare.cgroups import read_cgroup

    pod = procs.hold(6144, shim=False, TESSERA_SLICE_ID="elsewhere")
    cgroup = read_cgroup(pod[0])
    assert cgroup is not None
    events: list[EnforcementEvent] = []
    killed: list[str] = []
    enforcer = Enforcer(
        sim,
        EnforcerConfig(memory_grace_seconds=2),
        emit=events.append,
        on_kill=lambda spec, message: killed.append(spec.slice_id),
        clock=Clock(),
        probe=NodeProbe,
    )
    enforcer.poll([slice_on("pod", (2**22 + 7, 1), cgroup=cgroup)])
    assert killed == ["pod"] and [(e.reason, e.slice_id) for e in events] == [("SliceMemoryExceeded", "pod")]
    assert not enforcer.snapshot.gpus[0].strays
    # a process of that cgroup with no slice claiming it is a stray, whatever its environment says (a
    # fresh one: the first was just sent SIGTERM, and may or may not have exited by the next poll)
    stray = procs.hold(6144, shim=False, TESSERA_SLICE_ID="elsewhere")
    other = Enforcer(sim, EnforcerConfig(), emit=events.append, clock=Clock(), probe=NodeProbe)
    other.poll([slice_on("pod", (2**22 + 7, 1), cgroup="/kubepods/burstable/pod-elsewhere")])
    assert [s.pid for s in other.snapshot.gpus[0].strays if s.pid != pod[0]] == [stray[0]]
