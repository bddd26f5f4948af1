"""One prepared check of GPU sharing on a machine with a real NVIDIA GPU (`scripts/gpu-check`).

    scripts/gpu-check [--simulated] [--quick] [--out PATH]

Checks, each with its own hard time limit (the whole run stops by itself within `--budget` seconds):

1. ``inventory``: the NVML backend's inventory against ``nvidia-smi`` (uuid, name, memory within 1 %,
   MIG mode); with ``--simulated``, the simulated backend's against its configured GPUs;
2. ``memory-watchdog``: a burn past its slice's memory is stopped by the enforcer (SIGTERM; one that
   ignores SIGTERM gets SIGKILL after the grace period) and reported as SliceMemoryExceeded, while a
   neighbour within its limit keeps running;
3. ``cooperative-oom``: a torch task under the cooperative hook that allocates past its slice gets
   ``torch.cuda.OutOfMemoryError`` and is not killed (``--simulated``: a stand-in torch whose
   allocations land on the simulated device);
4. ``shares-<tier>``: the shares two contending full-time burns with 30 %/70 % slices achieve, from the
   backend's per-process utilisation (the watchdog's ``throttle`` duty-cycling always; MPS only when a
   control daemon already runs: none is ever started);
5. ``overhead``: the enforcer's cost per poll with this backend.

It only reads the GPU: no MIG, compute-mode or clock change, no reset, no ``nvmlDeviceSet*`` call.
It installs nothing; what needs torch is skipped, with the reason, when torch is not importable.
Results: a markdown table on stdout, and JSON in ``$OUT/gpu-check.json`` (or ``--out``). Exit status
0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tessera.gpushare import cooperative
from tessera.gpushare.attribution import read_proc
from tessera.gpushare.device import DeviceBackend, DeviceError, GpuInfo, open_backend
from tessera.gpushare.enforce import EnforcementEvent, Enforcer, EnforcerConfig, SliceSpec
from tessera.gpushare.tiers import GpuTiers, NodeProbe, TaskSlice, probe_node, tier_env
from tessera.node.procs import proc_start_time

ROOT = Path(__file__).resolve().parents[2]
SIM_SPEC = "1xH200-141GB"
# the task's supervisor stand-in: the parent the enforcer attributes by; reports how its child ended
SHIM = (
    "import json, subprocess, sys; r = subprocess.call(sys.argv[1:]); "
    "print(json.dumps({'event': 'child-exit', 'returncode': r}), flush=True)"
)
# burn, but deaf to SIGTERM: only SIGKILL stops it
STUBBORN = (
    "import runpy, signal, sys; real = signal.signal; "
    "signal.signal = lambda s, h: real(s, signal.SIG_IGN if s == signal.SIGTERM else h); "
    "sys.argv[0] = 'burn'; runpy.run_module('tessera.gpushare.burn', run_name='__main__', alter_sys=True)"
)
# a torch task that allocates 256 MiB at a time up to twice its slice; reports how far it got
GREEDY_TORCH = """
import json, sys, time
import torch
limit = int(sys.argv[1])
torch.cuda.init()
held = []
report = {"oom": False}
try:
    while len(held) * 256 < 2 * limit:
        held.append(torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda"))
except torch.cuda.OutOfMemoryError as exc:
    report = {"oom": True, "error": str(exc).splitlines()[0][:160]}
report["allocated_mib"] = len(held) * 256
print(json.dumps(report), flush=True)
time.sleep(float(sys.argv[2]))  # hold what it got, under the enforcer's eyes
"""
FAKE_TORCH_INIT = """
from . import cuda
uint8 = "uint8"
def empty(nbytes, dtype=None, device=None):
    return cuda._allocate(nbytes)
"""
FAKE_TORCH_CUDA = """
from tessera.gpushare.simhelper import SimGpu
class OutOfMemoryError(RuntimeError):
    pass
_initialized = False
_queued = []
_fraction = 1.0
_gpu = None
_held = 0
def is_initialized():
    return _initialized
def _lazy_call(fn):
    _queued.append(fn)
def device_count():
    return 1
def set_per_process_memory_fraction(fraction, device=None):
    global _fraction
    _fraction = fraction
def init():
    global _initialized, _gpu
    if _initialized:
        return
    _initialized = True
    _gpu = SimGpu.from_env()
    for fn in _queued:
        fn()
def _allocate(nbytes):
    global _held
    init()
    mib = -(-nbytes // 2**20)
    cap = _fraction * _gpu.memory_mib
    if _held + mib > cap:
        raise OutOfMemoryError(
            f"CUDA out of memory (stand-in torch): {mib} MiB more than the {cap:.0f} MiB cap; {_held} held"
        )
    _gpu.allocate(mib)
    _held += mib
    return object()
"""


class StepTimeout(Exception):
    pass


@dataclass
class Check:
    name: str
    result: str  # PASS, FAIL or SKIP
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Fail(Exception):
    """A check that failed; its message says how."""


# processes --------------------------------------------------------------------------------------


class Workload:
    """A process under a stand-in shim (a new session), its JSON lines collected with their times."""

    running: list[Workload] = []

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SHIM, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        Workload.running.append(self)
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        start = proc_start_time(self.proc.pid)
        self.shim = (self.proc.pid, start or 0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"event": "text", "text": line.rstrip()}
            if not isinstance(doc, dict):
                doc = {"event": "text", "text": line.rstrip()}
            with self._cond:
                self.lines.append((time.monotonic(), doc))
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-20]

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, doc in self.lines:
                    if pred(doc):
                        return at, doc
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "; ".join(self.stderr[-3:]) or "no stderr"
                    raise Fail(f"shim {self.proc.pid}: expected output not seen in {timeout:g}s ({tail})")
                self._cond.wait(min(left, 0.2))

    def event(self, name: str, timeout: float) -> tuple[float, dict[str, Any]]:
        return self.wait_for(lambda d: d.get("event") == name, timeout)

    def child_pid(self) -> int | None:
        for _, doc in self.lines:
            if doc.get("event") == "ready":
                return int(doc["pid"])
        return None

    def alive(self) -> bool:
        pid = self.child_pid()
        info = read_proc(pid) if pid is not None else None
        return self.proc.poll() is None and info is not None and info.state not in ("Z", "X")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self in Workload.running:
            Workload.running.remove(self)


def stop_all() -> None:
    for w in list(Workload.running):
        w.stop()


class Polling:
    """An enforcer polling in a thread at its poll interval; its events and kills are recorded."""

    def __init__(
        self, backend: DeviceBackend, config: EnforcerConfig, probe: Callable[[], NodeProbe]
    ) -> None:
        self.events: list[tuple[float, EnforcementEvent]] = []
        self.kills: list[tuple[float, str]] = []
        self.enforcer = Enforcer(
            backend,
            config,
            emit=lambda e: self.events.append((time.monotonic(), e)),
            on_kill=lambda spec, message: self.kills.append((time.monotonic(), spec.slice_id)),
            probe=probe,
        )
        self.every = config.poll_seconds
        self.specs: list[SliceSpec] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                self.enforcer.poll(list(self.specs))
                next_at += self.every
                self._stop.wait(max(next_at - time.monotonic(), 0.0))
        except BaseException as exc:  # reported by the check that polls
            self.error = exc

    def __enter__(self) -> Polling:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # the backend belongs to the run, not to this enforcer: it is closed at the end

    def reasons(self, slice_id: str) -> list[str]:
        return [e.reason for _, e in self.events if e.slice_id == slice_id]


# the run ----------------------------------------------------------------------------------------


@dataclass
class Context:
    simulated: bool
    quick: bool
    backend: DeviceBackend | None = None
    backend_error: str | None = None
    gpu: GpuInfo | None = None
    device: str = ""  # where processes are listed: the GPU, or its first MIG instance
    torch: str | None = None  # why torch cannot be used, None when it can
    probe: Callable[[], NodeProbe] = probe_node
    tmp: Path = Path()

    def env(self, **extra: str) -> dict[str, str]:
        assert self.backend is not None
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, **self.backend.workload_env(), "CUDA_VISIBLE_DEVICES": self.device}
        env["PYTHONPATH"] = f"{ROOT}:{path}" if path else str(ROOT)
        env.pop("TESSERA_COOPERATIVE_FILE", None)
        return {**env, **extra}

    def burn(self, memory: str, compute: float, *extra: str) -> list[str]:
        engine = "sim" if self.simulated else "torch"
        return ["--memory", memory, "--compute", f"{compute:g}", "--device", engine, *extra]

    def need_backend(self) -> tuple[DeviceBackend, GpuInfo]:
        if self.backend is None or self.gpu is None:
            raise Skip(f"no device backend: {self.backend_error}")
        return self.backend, self.gpu

    def need_burn(self) -> None:
        if not self.simulated and self.torch is not None:
            raise Skip(f"needs torch with CUDA: {self.torch}")

    def spec(self, slice_id: str, w: Workload, memory: int, compute: float, policy: str) -> SliceSpec:
        assert self.gpu is not None
        mig = self.device if self.device != self.gpu.uuid else None
        return SliceSpec(
            slice_id, self.gpu.uuid, memory, compute, w.shim, mig_instance=mig, compute_policy=policy
        )


def burn_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera.gpushare.burn", *args]


# 1. inventory -----------------------------------------------------------------------------------


def check_inventory(ctx: Context) -> Check:
    if ctx.backend is None:
        raise Fail(f"the backend does not open: {ctx.backend_error}")
    inv = ctx.backend.inventory()
    figures: dict[str, Any] = {
        "driver": inv.driver_version,
        "cuda": inv.cuda_version,
        "gpus": len(inv.gpus),
        "mig_mode": [g.mig_mode for g in inv.gpus],
    }
    want: list[tuple[str, str, int, bool]]
    if ctx.simulated:
        from tessera.gpushare.simulated import simulated_gpu_infos

        want = [(g.uuid, g.model, g.memory_mib, False) for g in simulated_gpu_infos(SIM_SPEC, "gpucheck")]
        source = f"the simulated config {SIM_SPEC}"
    else:
        query = "uuid,name,memory.total,mig.mode.current"
        try:
            done = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Fail(f"nvidia-smi: {exc}") from None
        if done.returncode != 0:
            raise Fail(f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}")
        want = []
        for line in done.stdout.strip().splitlines():
            uuid, name, memory, mig = (p.strip() for p in line.split(","))
            want.append((uuid, name, round(float(memory)), mig == "Enabled"))
        source = "nvidia-smi"
    got = {g.uuid: g for g in inv.gpus}
    problems = []
    for w_uuid, w_name, w_memory, w_mig in want:
        g = got.get(w_uuid)
        if g is None:
            problems.append(f"{w_uuid} missing")
            continue
        if g.model != w_name:
            problems.append(f"{w_uuid}: name {g.model!r} != {w_name!r}")
        if abs(g.memory_mib - w_memory) > 0.01 * w_memory:
            problems.append(f"{w_uuid}: memory {g.memory_mib} MiB != {w_memory} MiB")
        if g.mig_mode != w_mig:
            problems.append(f"{w_uuid}: MIG mode {g.mig_mode} != {w_mig}")
    extra = set(got) - {w[0] for w in want}
    if extra:
        problems.append(f"not in {source}: {sorted(extra)}")
    figures["models"] = sorted({g.model for g in inv.gpus})
    figures["memory_mib"] = [g.memory_mib for g in inv.gpus]
    if problems:
        raise Fail("; ".join(problems))
    return Check("inventory", "PASS", f"{len(want)} GPU(s) match {source}", figures)


# 2. the memory watchdog -------------------------------------------------------------------------


def check_memory(ctx: Context) -> Check:
    ctx.need_backend()
    ctx.need_burn()
    grace = 2.0
    workloads = {
        "neighbour": Workload(burn_argv(*ctx.burn("512Mi", 5)), ctx.env()),
        "greedy": Workload(burn_argv(*ctx.burn("3Gi", 5)), ctx.env()),
        "stubborn": Workload([sys.executable, "-c", STUBBORN, *ctx.burn("3Gi", 5)], ctx.env()),
    }
    limits = {"neighbour": 4096, "greedy": 2048, "stubborn": 2048}
    try:
        for w in workloads.values():
            w.event("ready", 60)
        config = EnforcerConfig(poll_seconds=0.1, memory_grace_seconds=grace)
        with Polling(ctx.backend, config, ctx.probe) as polling:  # type: ignore[arg-type]
            began = time.monotonic()
            polling.specs = [ctx.spec(n, w, limits[n], 10, "measure") for n, w in workloads.items()]
            exits = {n: workloads[n].event("child-exit", 15 + grace) for n in ("greedy", "stubborn")}
            time.sleep(0.5)  # the neighbour must outlive them
            if polling.error is not None:
                raise Fail(f"the enforcer failed: {polling.error!r}")
            neighbour_alive = workloads["neighbour"].alive()
            status = {s.spec.slice_id: s for s in polling.enforcer.snapshot.slices}
        termed = {sid: at for at, sid in reversed(polling.kills)}
        figures: dict[str, Any] = {
            "grace_s": grace,
            "greedy_rc": exits["greedy"][1]["returncode"],
            "stubborn_rc": exits["stubborn"][1]["returncode"],
            "neighbour_used_mib": status["neighbour"].used_mib,
        }
        problems = []
        for name in ("greedy", "stubborn"):
            if "SliceMemoryExceeded" not in polling.reasons(name):
                problems.append(f"no SliceMemoryExceeded for {name}")
            if name in termed:
                figures[f"{name}_term_ms"] = round(1000 * (termed[name] - began))
                figures[f"{name}_exit_after_term_ms"] = round(1000 * (exits[name][0] - termed[name]))
        done = [d for _, d in workloads["greedy"].lines if d.get("event") == "done"]
        if figures["greedy_rc"] != 0 or not done or done[0].get("reason") != "SIGTERM":
            problems.append(f"greedy did not exit on SIGTERM (rc {figures['greedy_rc']}, done {done})")
        if figures["stubborn_rc"] != -signal.SIGKILL:
            problems.append(f"stubborn was not SIGKILLed (rc {figures['stubborn_rc']})")
        elif "stubborn" in termed and exits["stubborn"][0] - termed["stubborn"] < grace - 0.3:
            problems.append("stubborn was killed before its grace period was over")
        if polling.reasons("neighbour"):
            problems.append(f"events for the neighbour: {polling.reasons('neighbour')}")
        if not neighbour_alive:
            problems.append("the neighbour within its limit did not survive")
        if problems:
            raise Fail("; ".join(problems))
        return Check(
            "memory-watchdog",
            "PASS",
            "over-limit slices got SIGTERM (and SIGKILL after the grace) with SliceMemoryExceeded; "
            "the neighbour kept running",
            figures,
        )
    finally:
        for w in workloads.values():
            w.stop()


# 3. the cooperative hook ------------------------------------------------------------------------


def check_cooperative(ctx: Context) -> Check:
    _, gpu = ctx.need_backend()
    limit = 4096
    pythonpath = ""
    if ctx.simulated:
        fake = ctx.tmp / "fake-torch"
        (fake / "torch").mkdir(parents=True, exist_ok=True)
        (fake / "torch" / "__init__.py").write_text(FAKE_TORCH_INIT)
        (fake / "torch" / "cuda.py").write_text(FAKE_TORCH_CUDA)
        pythonpath = str(fake)
    elif ctx.torch is not None:
        raise Skip(f"needs torch with CUDA: {ctx.torch}")
    task_dir = ctx.tmp / "coop-task"
    task_dir.mkdir(exist_ok=True)
    env = ctx.env()
    if pythonpath:
        env["PYTHONPATH"] = f"{pythonpath}:{env['PYTHONPATH']}"
    env.update(cooperative.install(task_dir, [(limit, gpu.memory_mib)], env))
    w = Workload([sys.executable, "-c", GREEDY_TORCH, str(limit), "1.5"], env)
    try:
        config = EnforcerConfig(poll_seconds=0.1, memory_grace_seconds=2.0)
        with Polling(ctx.backend, config, ctx.probe) as polling:  # type: ignore[arg-type]
            polling.specs = [ctx.spec("coop", w, limit, 10, "measure")]
            _, report = w.wait_for(lambda d: "oom" in d, 75)
            time.sleep(0.5)  # the task holds what it got for 1.5 s: the enforcer's reading of it
            status = polling.enforcer.snapshot.slices
            _, end = w.event("child-exit", 15)
        figures = {
            "slice_mib": limit,
            "fraction": cooperative.fraction(limit, gpu.memory_mib),
            "allocated_mib": report.get("allocated_mib"),
            "child_rc": end["returncode"],
            "device_used_mib_holding": status[0].used_mib if status else None,
        }
        if not report["oom"]:
            raise Fail(f"no OutOfMemoryError: allocated {report.get('allocated_mib')} MiB past the slice")
        if end["returncode"] != 0 or polling.kills:
            raise Fail(f"the task was stopped (rc {end['returncode']}, events {polling.reasons('coop')})")
        if polling.reasons("coop"):
            raise Fail(f"the enforcer reported the slice: {polling.reasons('coop')}")
        what = "stand-in torch on the simulated device" if ctx.simulated else "torch"
        return Check(
            "cooperative-oom", "PASS", f"clean OutOfMemoryError ({what}): {report['error']}", figures
        )
    finally:
        w.stop()


# 4. compute shares --------------------------------------------------------------------------------


def measure_shares(ctx: Context, tier: str, seconds: float, extra_env: list[dict[str, str]]) -> Check:
    backend, _ = ctx.need_backend()
    targets = (30.0, 70.0)
    workloads = [Workload(burn_argv(*ctx.burn("1Gi", 100)), ctx.env(**e)) for e in extra_env]
    try:
        pids = [int(w.event("ready", 60)[1]["pid"]) for w in workloads]
        config = EnforcerConfig(poll_seconds=0.1, window_seconds=seconds)
        with Polling(backend, config, ctx.probe) as polling:
            specs = [
                ctx.spec(f"s{int(t)}", w, 4096, t, "throttle")
                for w, t in zip(workloads, targets, strict=True)
            ]
            polling.specs = specs
            time.sleep(1.0 if ctx.simulated else 2.0)  # both running, the duty cycle settled
            since = time.time()
            busy = dict.fromkeys(pids, 0.0)
            covered = 0.0
            sampled = False
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.5)
                got = backend.process_utilization(ctx.device, since)
                if not got.supported:
                    raise Skip("the device does not report per-process utilisation (MIG mode?)")
                if got.newest is None or got.newest <= since:
                    continue
                span = got.newest - since
                by_pid = got.by_pid()
                for pid in pids:
                    if pid in by_pid:
                        sampled = True
                        busy[pid] += by_pid[pid].sm_pct * span
                covered += span
                since = got.newest
            if polling.error is not None:
                raise Fail(f"the enforcer failed: {polling.error!r}")
            status = {s.spec.slice_id: s for s in polling.enforcer.snapshot.slices}
        if not sampled or covered <= 0:
            raise Skip(f"no per-process utilisation samples for the burns under {tier}")
        achieved = [busy[p] / covered for p in pids]
        figures: dict[str, Any] = {
            "targets_pct": list(targets),
            "achieved_pct": [round(a, 1) for a in achieved],
            "sum_pct": round(sum(achieved), 1),
            "enforcer_share_pct": [status[s.slice_id].share_pct for s in specs],
            "throttled_pct": [round(status[s.slice_id].throttled_pct, 1) for s in specs],
            "measured_s": round(covered, 2),
        }
        problems = []
        if sum(achieved) > 105:
            problems.append(f"shares sum to {sum(achieved):.1f}% > 105%")
        if achieved[1] <= achieved[0]:
            problems.append("the 70% slice did not get more than the 30% one")
        worst = max(abs(a - t) for a, t in zip(achieved, targets, strict=True))
        figures["max_error_points"] = round(worst, 1)
        if worst > 20:
            problems.append(f"a share is {worst:.1f} points off its target")
        if problems:
            raise Fail("; ".join(problems))
        return Check(f"shares-{tier}", "PASS", f"30/70 over {covered:.1f}s", figures)
    finally:
        for w in workloads:
            w.stop()


def check_shares_watchdog(ctx: Context) -> Check:
    ctx.need_burn()
    check = measure_shares(ctx, "watchdog-throttle", 3.0 if ctx.quick else 10.0, [{}, {}])
    return check


def check_shares_mps(ctx: Context) -> Check:
    if ctx.simulated:
        raise Skip("MPS is a real-GPU tier")
    if not ctx.probe().mps:
        raise Skip("no MPS control daemon running (this check never starts one)")
    _, gpu = ctx.need_backend()
    ctx.need_burn()
    if gpu.mig_mode:
        raise Skip("the GPU is in MIG mode")
    node = ctx.probe()
    envs = [tier_env([TaskSlice(GpuTiers(mps=True), False, 4096, pct)], node, os.environ) for pct in (30, 70)]
    return measure_shares(ctx, "mps", 3.0 if ctx.quick else 10.0, envs)


# 5. the agent's overhead ------------------------------------------------------------------------


def check_overhead(ctx: Context) -> Check:
    backend, _ = ctx.need_backend()
    ctx.need_burn()
    w = Workload(burn_argv(*ctx.burn("256Mi", 20)), ctx.env())
    try:
        w.event("ready", 60)
        poll_seconds = 0.1
        enforcer = Enforcer(backend, EnforcerConfig(poll_seconds=poll_seconds), probe=ctx.probe)
        specs = [ctx.spec("overhead", w, 4096, 50, "measure")]
        began_cpu, began_wall = time.thread_time(), time.perf_counter()
        enforcer.poll(specs)
        cold_cpu, cold_wall = time.thread_time() - began_cpu, time.perf_counter() - began_wall
        cpu, wall = [], []
        for _ in range(30 if ctx.quick else 50):
            time.sleep(poll_seconds)
            c, t = time.thread_time(), time.perf_counter()
            enforcer.poll(specs)
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
        attributed = sum(s.processes for s in enforcer.snapshot.slices)
        cpu.sort()
        mean = statistics.fmean(cpu)
        cpu_pct = round(100 * mean / poll_seconds, 2)
        figures = {
            "backend": backend.kind,
            "cold_cpu_us": round(cold_cpu * 1e6),
            "cold_wall_us": round(cold_wall * 1e6),
            "mean_cpu_us": round(mean * 1e6),
            "p95_cpu_us": round(cpu[int(0.95 * (len(cpu) - 1))] * 1e6),
            "mean_wall_us": round(statistics.fmean(wall) * 1e6),
            "cpu_pct_at_100ms": cpu_pct,
            "processes_attributed": attributed,
        }
        if attributed < 1:
            raise Fail("the burn was not attributed to its slice")
        if cpu_pct > 5:
            raise Fail(f"{cpu_pct}% of a core at 100 ms polling (over 5%)")
        return Check("overhead", "PASS", f"{len(cpu)} polls at 100 ms, one slice", figures)
    finally:
        w.stop()


# driving ----------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise StepTimeout(f"step timed out after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_step(name: str, fn: Callable[[Context], Check], ctx: Context, limit: float) -> Check:
    began = time.monotonic()
    try:
        with time_limit(limit):
            check = fn(ctx)
    except Skip as exc:
        check = Check(name, "SKIP", str(exc))
    except Fail as exc:
        check = Check(name, "FAIL", str(exc))
    except StepTimeout as exc:
        check = Check(name, "FAIL", str(exc))
    except Exception as exc:
        check = Check(name, "FAIL", f"{type(exc).__name__}: {exc}")
    finally:
        stop_all()
    check.seconds = round(time.monotonic() - began, 1)
    return check


def probe_torch() -> str | None:
    """Why torch with CUDA cannot be used here (asked in a child, so this process holds no context)."""
    code = "import torch; print(torch.__version__, torch.cuda.is_available())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return "importing torch took over 90s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"torch is not importable ({last})"
    if not done.stdout.strip().endswith("True"):
        return f"torch {done.stdout.split()[0]} sees no CUDA device"
    return None


STEPS: list[tuple[str, Callable[[Context], Check], float]] = [
    ("inventory", check_inventory, 30),
    ("memory-watchdog", check_memory, 75),
    ("cooperative-oom", check_cooperative, 100),
    ("shares-watchdog-throttle", check_shares_watchdog, 60),
    ("shares-mps", check_shares_mps, 60),
    ("overhead", check_overhead, 40),
]


def table(checks: Sequence[Check], header: dict[str, Any]) -> str:
    lines = [f"### GPU check ({', '.join(f'{k}: {v}' for k, v in header.items())})", ""]
    lines += ["| check | result | reason | figures | s |", "|---|---|---|---|---|"]
    for c in checks:
        figures = "; ".join(f"{k}={v}" for k, v in c.figures.items())
        reason = c.reason.replace("|", "/").replace("\n", " ")
        lines.append(f"| {c.name} | {c.result} | {reason} | {figures.replace('|', '/')} | {c.seconds:g} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--simulated", action="store_true", help=f"the simulated twin ({SIM_SPEC})")
    parser.add_argument("--quick", action="store_true", help="3 s share measurements instead of 10 s")
    parser.add_argument("--out", type=Path, help="JSON results (default $OUT/gpu-check.json)")
    parser.add_argument("--gpu", type=int, default=0, help="index of the GPU to use (default 0)")
    parser.add_argument("--budget", type=float, default=450, help="hard limit for the whole run (s)")
    args = parser.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) / "gpu-check.json" if os.environ.get("OUT") else None)
    began = time.monotonic()
    checks: list[Check] = []
    header: dict[str, Any] = {"mode": "simulated" if args.simulated else "nvml"}

    def write() -> None:
        doc = {
            **header,
            "seconds": round(time.monotonic() - began, 1),
            "checks": [vars(c) for c in checks],
            "ok": all(c.result != "FAIL" for c in checks),
        }
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    def give_up() -> None:  # the whole run's hard limit, whatever a step is doing
        stop_all()
        checks.append(Check("budget", "FAIL", f"the run passed its {args.budget:g}s budget"))
        sys.stdout.write(table(checks, header))
        write()
        os._exit(1)

    watchdog = threading.Timer(args.budget, give_up)
    watchdog.daemon = True
    watchdog.start()
    with tempfile.TemporaryDirectory(prefix="tessera-gpucheck-") as tmp:
        ctx = Context(simulated=args.simulated, quick=args.quick, tmp=Path(tmp))
        try:
            if args.simulated:
                ctx.backend = open_backend(
                    "simulated", simulate=SIM_SPEC, node="gpucheck", state_dir=Path(tmp) / "sim"
                )
                ctx.probe = NodeProbe
            else:
                ctx.backend = open_backend("nvml")
                ctx.torch = probe_torch()
                header["torch"] = ctx.torch or "ok"
        except (DeviceError, ValueError) as exc:
            ctx.backend_error = str(exc)
        if ctx.backend is not None:
            try:
                inv = ctx.backend.inventory()
                header.update(driver=inv.driver_version, cuda=inv.cuda_version)
                ctx.gpu = next((g for g in inv.gpus if g.index == args.gpu), None)
                if ctx.gpu is None:
                    ctx.backend_error = f"no GPU with index {args.gpu}"
                else:
                    header["gpu"] = f"{ctx.gpu.model} {ctx.gpu.uuid}"
                    mig = ctx.gpu.mig_instances
                    ctx.device = mig[0].uuid if ctx.gpu.mig_mode and mig else ctx.gpu.uuid
            except DeviceError as exc:
                ctx.backend_error = str(exc)
        try:
            for name, fn, limit in STEPS:
                checks.append(run_step(name, fn, ctx, limit))
                sys.stderr.write(f"gpu-check: {name}: {checks[-1].result} ({checks[-1].seconds:g}s)\n")
        finally:
            watchdog.cancel()
            stop_all()
            if ctx.backend is not None:
                ctx.backend.close()
    sys.stdout.write(table(checks, header))
    write()
    return 0 if all(c.result != "FAIL" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
