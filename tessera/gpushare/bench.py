"""Measurements of the watchdog tier on the simulated device (`scripts/bench-gpushare` prints them).

* `memory_to_signal`: how long from a workload allocating past its slice to its SIGTERM;
* `share_accuracy`: the compute shares two contending full-time workloads achieve under ``throttle``;
* `poll_cost`: the enforcer's CPU time per poll for many GPUs, slices and processes (real processes,
  a synthetic device, so that only the node's own work is measured).

Every workload runs under a stand-in shim (a parent process), as tasks do under the node's shims.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.gpushare.device import DeviceInventory, GpuInfo, ProcessMemory, ProcessSample, ProcessSamples
from tessera.gpushare.enforce import Enforcer, EnforcerConfig, SliceSpec
from tessera.gpushare.simhelper import gpu_dir, read_records
from tessera.gpushare.simulated import SimulatedBackend
from tessera.gpushare.tiers import NodeProbe
from tessera.node.procs import proc_start_time

SHIM = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
OVERAGE = """
import signal, sys, time
from tessera.gpushare.simhelper import SimGpu
gpu = SimGpu.from_env()
gpu.allocate(512)
sent = []
def on_term(signum, frame):
    sys.stdout.write(f"{time.monotonic() - sent[0]}\\n")
    sys.stdout.flush()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
sys.stdin.readline()
sent.append(time.monotonic())
gpu.allocate(2048)
time.sleep(30)
"""


class _Polling:
    """An enforcer polling in a thread, its slices set from outside."""

    def __init__(self, enforcer: Enforcer, every: float) -> None:
        self.enforcer = enforcer
        self.every = every
        self.specs: list[SliceSpec] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.enforcer.poll(list(self.specs))
            next_at += self.every
            self.stop.wait(max(next_at - time.monotonic(), 0.0))

    def __enter__(self) -> _Polling:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.enforcer.close()


def _spawn(argv: Sequence[str], env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", SHIM, *argv], env=env, text=True, start_new_session=True, **kw
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _spec(
    slice_id: str, gpu: str, shim: subprocess.Popen[str], memory: int, compute: float, policy: str
) -> SliceSpec:
    start = proc_start_time(shim.pid)
    assert start is not None
    return SliceSpec(slice_id, gpu, memory, compute, (shim.pid, start), compute_policy=policy)


@dataclass(frozen=True)
class SignalTimes:
    poll_seconds: float
    seconds: list[float]  # overage to SIGTERM, one per trial


def memory_to_signal(trials: int = 20, poll_seconds: float = 0.1) -> SignalTimes:
    """Trials of: allocate past a 1 GiB slice, time until the workload's SIGTERM handler runs."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        sim = SimulatedBackend("1xA100-80GB", state_dir=Path(tmp), node="bench")
        gpu = sim.gpus[0].uuid
        env = {**os.environ, **sim.workload_env(), "CUDA_VISIBLE_DEVICES": gpu}
        config = EnforcerConfig(poll_seconds=poll_seconds, memory_grace_seconds=30)
        times: list[float] = []
        with _Polling(Enforcer(sim, config, probe=NodeProbe), poll_seconds) as polling:
            for trial in range(trials):
                shim = _spawn(
                    [sys.executable, "-c", OVERAGE], env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                try:
                    assert shim.stdout is not None and shim.stdin is not None
                    assert shim.stdout.readline() == "ready\n"
                    polling.specs = [_spec(f"t{trial}", gpu, shim, 1024, 10, "measure")]
                    # the slice is known before it goes over, at a random point of the poll cycle
                    time.sleep(2 * poll_seconds + random.uniform(0, poll_seconds))
                    shim.stdin.write("go\n")
                    shim.stdin.flush()
                    times.append(float(shim.stdout.readline()))
                finally:
                    polling.specs = []
                    _stop(shim)
        return SignalTimes(poll_seconds, times)


@dataclass(frozen=True)
class ShareResult:
    targets: tuple[float, float]
    achieved: tuple[float, float]  # percent of the window's time each ran kernels
    throttled: tuple[float, float]  # percent of the window each was stopped
    policy: str

    @property
    def busy(self) -> float:
        return sum(self.achieved)


def share_accuracy(
    targets: tuple[float, float], seconds: float = 10.0, policy: str = "throttle", poll_seconds: float = 0.1
) -> ShareResult:
    """Two full-time burns on one simulated GPU with slices of `targets` percent, measured over `seconds`."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        sim = SimulatedBackend("1xA100-80GB", state_dir=Path(tmp), node="bench")
        gpu = sim.gpus[0].uuid
        env = {**os.environ, **sim.workload_env(), "CUDA_VISIBLE_DEVICES": gpu}
        burn = [sys.executable, "-m", "tessera.gpushare.burn", "--memory", "1Gi", "--compute", "100"]
        shims = [_spawn(burn, env, stdout=subprocess.PIPE) for _ in targets]
        try:
            for shim in shims:
                assert shim.stdout is not None and shim.stdout.readline().startswith('{"event": "ready"')
            pairs = enumerate(zip(shims, targets, strict=True))
            specs = [_spec(f"s{i}", gpu, shim, 4096, target, policy) for i, (shim, target) in pairs]
            config = EnforcerConfig(poll_seconds=poll_seconds, window_seconds=seconds)
            with _Polling(Enforcer(sim, config, probe=NodeProbe), poll_seconds) as polling:
                polling.specs = specs
                time.sleep(1.0)  # both running, the duty cycle settled
                before, began = _busy_by_parent(sim, gpu), time.monotonic()
                time.sleep(seconds)
                after, elapsed = _busy_by_parent(sim, gpu), time.monotonic() - began
                snapshot = {s.spec.slice_id: s for s in polling.enforcer.snapshot.slices}
            achieved = [100 * (after[s.pid] - before[s.pid]) / 1e9 / elapsed for s in shims]
            throttled = [snapshot[spec.slice_id].throttled_pct for spec in specs]
            return ShareResult(targets, (achieved[0], achieved[1]), (throttled[0], throttled[1]), policy)
        finally:
            for shim in shims:
                _stop(shim)


def _busy_by_parent(sim: SimulatedBackend, gpu: str) -> dict[int, int]:
    """Kernel time (ns, cumulative) of each process on the GPU, keyed by its parent (the shim)."""
    out = {}
    for record in read_records(gpu_dir(sim.state_dir, gpu)):
        with open(f"/proc/{record.pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        out[ppid] = record.busy_ns
    return out


class SyntheticDevice:
    """GPUs whose process lists are given: the device's own cost is left out of the measurement."""

    kind = "synthetic"
    simulated = True
    supports_driver_memory_limits = False

    def __init__(
        self, gpus: int, procs: dict[str, list[int]], clock: Callable[[], float] = time.time
    ) -> None:
        self.gpus = tuple(
            GpuInfo(uuid=f"GPU-{i}", index=i, model="H200", memory_mib=143771) for i in range(gpus)
        )
        self.procs = procs
        self.clock = clock

    def inventory(self) -> DeviceInventory:
        return DeviceInventory(driver_version="570.1", cuda_version="12.8", gpus=self.gpus)

    def processes(self, gpu_uuid: str) -> list[ProcessMemory]:
        return [ProcessMemory(pid, 256) for pid in self.procs[gpu_uuid]]

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples:
        now = self.clock()
        samples = tuple(ProcessSample(pid, 1.0, now) for pid in self.procs[gpu_uuid])
        return ProcessSamples(samples=samples, newest=now)

    def device_utilization(self, gpu_uuid: str) -> float | None:
        return 64.0

    def workload_env(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class PollCost:
    gpus: int
    slices: int
    processes: int
    cold_us: float  # the first poll: every process attributed from /proc
    mean_us: float
    p95_us: float
    poll_seconds: float

    @property
    def cpu_pct(self) -> float:
        """Percent of one core at this poll interval."""
        return 100 * self.mean_us / 1e6 / self.poll_seconds


def poll_cost(
    gpus: int = 8,
    slices_per_gpu: int = 16,
    procs_per_slice: int = 4,
    polls: int = 200,
    poll_seconds: float = 0.1,
) -> PollCost:
    """CPU time of `Enforcer.poll` over real (sleeping) processes under stand-in shims."""
    children = " & ".join(["sleep 600"] * procs_per_slice)
    shims = [
        subprocess.Popen(["sh", "-c", f"{children} & wait"], start_new_session=True)
        for _ in range(gpus * slices_per_gpu)
    ]
    try:
        specs: list[SliceSpec] = []
        procs: dict[str, list[int]] = {f"GPU-{g}": [] for g in range(gpus)}
        for n, shim in enumerate(shims):
            gpu = f"GPU-{n // slices_per_gpu}"
            kids = _children(shim.pid, procs_per_slice)
            procs[gpu].extend(kids)
            start = proc_start_time(shim.pid)
            assert start is not None
            specs.append(SliceSpec(f"s{n}", gpu, 8192, 100 / slices_per_gpu, (shim.pid, start)))
        device = SyntheticDevice(gpus, procs)
        clock = [0.0]  # the enforcer's clock moves a poll interval per poll, as at that polling rate
        config = EnforcerConfig(poll_seconds=poll_seconds)
        enforcer = Enforcer(device, config, probe=NodeProbe, clock=lambda: clock[0])
        began = time.thread_time()
        enforcer.poll(specs)
        cold = time.thread_time() - began
        costs = []
        for _ in range(polls):
            clock[0] += poll_seconds
            began = time.thread_time()
            enforcer.poll(specs)
            costs.append(time.thread_time() - began)
        attributed = sum(s.processes for s in enforcer.snapshot.slices)
        assert attributed == gpus * slices_per_gpu * procs_per_slice, attributed
        costs.sort()
        return PollCost(
            gpus=gpus,
            slices=len(specs),
            processes=sum(len(p) for p in procs.values()),
            cold_us=cold * 1e6,
            mean_us=statistics.fmean(costs) * 1e6,
            p95_us=costs[int(0.95 * (len(costs) - 1))] * 1e6,
            poll_seconds=poll_seconds,
        )
    finally:
        for shim in shims:
            try:
                os.killpg(shim.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shim.wait()


def _children(pid: int, count: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            kids = []
        if len(kids) >= count or time.monotonic() > deadline:
            return kids[:count]
        time.sleep(0.01)
