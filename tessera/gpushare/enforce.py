"""The watchdog tier, one poll at a time: read the device, attribute its processes, enforce, measure.

The node agent calls `Enforcer.poll` every `poll_seconds` (100 ms) with the slices it runs. Each poll:

1. reads every GPU's processes (MIG instances one by one) and their kernel time since the last poll;
2. attributes each process to the slice whose shim it descends from (`attribution`), or, for a slice
   the kubelet started, whose pod cgroup holds it (`cgroups`), never by what its environment says;
   an attributed verdict is reused for `attribution_ttl_seconds`;
3. memory: a slice over its limit gets SliceMemoryExceeded, then SIGTERM to its task's process group
   (a pod's slice: every process in the pod's cgroup, given `cgroup_root`) and its GPU processes,
   SIGKILL after the grace period (`watchdog`), under the ``kill`` policy;
4. compute: measures each slice's share over a sliding window and duty-cycles the slices whose policy
   allows it (`throttle`), stopping and resuming them through the `StopLedger`;
5. processes on a managed GPU that belong to no slice are reported after a grace period (and killed
   when the node's policy says so);
6. publishes a `Snapshot` for the agent's reports.

Device errors never end the agent: a GPU that cannot be read is reported lost (GpuLost) and skipped
until it can be read again; a device that cannot be read at all (DeviceUnavailable) is reported and
tried again next poll; a process that exits mid-read is simply not there.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tessera.gpushare.attribution import Attribution, ProcInfo, SliceShim, attribute, read_proc, snapshot
from tessera.gpushare.cgroups import attribute_live_by_cgroup, signal_cgroup
from tessera.gpushare.device import (
    DeviceBackend,
    DeviceError,
    DeviceInventory,
    DeviceUnavailable,
    GpuInfo,
    GpuLost,
    ProcessMemory,
)
from tessera.gpushare.signals import StopLedger, signal_group, signal_process
from tessera.gpushare.slices import (
    EnforcementEvent,
    EnforcerConfig,
    GpuStatus,
    SliceSpec,
    SliceStatus,
    Snapshot,
    Stray,
)
from tessera.gpushare.throttle import ComputeSample, DutyCycle, ShareMeter
from tessera.gpushare.tiers import GpuTiers, NodeProbe, SliceTier, gpu_tiers, probe_node, slice_tier
from tessera.gpushare.watchdog import Act, MemoryWatchdog

log = logging.getLogger(__name__)
__all__ = ["EnforcementEvent", "Enforcer", "EnforcerConfig", "SliceSpec", "Snapshot"]


@dataclass
class _Reading:
    procs: list[ProcessMemory]
    busy: dict[int, float] | None  # pid -> fraction of `interval` it ran kernels; None: not measured
    interval: float
    supported: bool = True  # False: this device never reports per-process kernel time (MIG)


@dataclass
class _Member:
    pid: int
    start_time: int
    used_mib: int | None


@dataclass
class _StrayState:
    first_seen: float
    start_time: int
    reported: bool = False
    termed_at: float | None = None


@dataclass
class _Cached:
    expires: float
    start_time: int
    verdict: Attribution


@dataclass
class _Poll:
    """What one poll found."""

    readings: dict[str, _Reading] = field(default_factory=dict)
    members: dict[str, list[_Member]] = field(default_factory=dict)
    strays: dict[str, list[tuple[Stray, int]]] = field(default_factory=dict)  # gpu -> (stray, start)


class Enforcer:
    """The watchdog tier over one device backend (None: a node without GPUs)."""

    def __init__(
        self,
        backend: DeviceBackend | None,
        config: EnforcerConfig | None = None,
        *,
        ledger: StopLedger | None = None,
        emit: Callable[[EnforcementEvent], None] = lambda event: None,
        on_kill: Callable[[SliceSpec, str], None] = lambda spec, message: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        read: Callable[..., ProcInfo | None] = read_proc,
        probe: Callable[[], NodeProbe] = probe_node,
        cgroup_root: Path | None = None,
    ) -> None:
        self.backend = backend
        # where the pods' cgroups are mounted (Kubernetes): a pod's slice is stopped as a whole there;
        # None signals only its GPU processes (and the task's group, where a shim started it)
        self.cgroup_root = cgroup_root
        self.config = config or EnforcerConfig()
        self.ledger = ledger or StopLedger(None)
        self.emit, self.on_kill = emit, on_kill
        self.clock, self.wall, self.read, self.probe = clock, wall, read, probe
        self.watchdog = MemoryWatchdog(self.config.memory_grace_seconds)
        self.duty = DutyCycle()
        self._last, self._last_at = _Poll(), wall()
        self._slice_tiers: dict[str, SliceTier] = {}
        self._lock = threading.Lock()
        self._specs: dict[str, SliceSpec] = {}
        self._meters: dict[str, ShareMeter] = {}
        self._gpus: dict[str, GpuInfo] = {}  # every GPU seen; a lost one stays, marked lost
        self._tiers: dict[str, GpuTiers] = {}
        self.node_probe = NodeProbe()
        self._inventory_at = float("-inf")
        self._lost: set[str] = set()
        self._unreadable: set[str] = set()
        self._closed = False
        self._device_error: str | None = None
        self._since: dict[str, float] = {}
        self._util: dict[str, tuple[float, float | None]] = {}
        self._cache: dict[tuple[str, int], _Cached] = {}
        self._strays: dict[tuple[str, int], _StrayState] = {}
        self._throttled_at: dict[str, float] = {}

    # the poll -----------------------------------------------------------------------------------

    def poll(self, specs: Sequence[SliceSpec]) -> None:
        with self._lock:
            if self._closed:
                return  # the agent is going: nothing may be stopped any more
            now = self.clock()
            self._release(set(self._specs) - {s.slice_id for s in specs})
            self._specs = {s.slice_id: s for s in specs}
            self._slice_tiers = {s.slice_id: self._tier(s) for s in specs}
            found = None
            if self.backend is not None and self._refresh_inventory(now):
                found = self._read(now)
                if found is not None:
                    self._memory(found, now)
                    self._compute(found, now)
                    self._handle_strays(found, now)
            self._last = found or _Poll()
            self._last_at = self.wall()

    @property
    def snapshot(self) -> Snapshot:
        """What the last poll found (built when asked: reports are rarer than polls)."""
        with self._lock:
            return self._publish(self._last, self._last_at)

    def gpu(self, uuid: str) -> GpuInfo | None:
        return self._gpus.get(uuid)

    def tiers(self, gpu_uuid: str) -> GpuTiers:
        """The tiers a GPU offers, as last probed (the watchdog alone until then)."""
        return self._tiers.get(gpu_uuid, GpuTiers())

    def release(self, slice_ids: Sequence[str]) -> None:
        """A slice's task is being stopped: resume it now, so that it gets its SIGTERM."""
        with self._lock:
            for slice_id in slice_ids:
                self.ledger.resume(slice_id)

    def close(self) -> None:
        """Resume everything stopped and stop enforcing: the agent is going away."""
        with self._lock:
            self._closed = True
            self.ledger.resume_all()

    def _release(self, gone: set[str]) -> None:
        for slice_id in gone:
            self.ledger.resume(slice_id)
            self.watchdog.forget(slice_id)
            self.duty.forget(slice_id)
            self._meters.pop(slice_id, None)
            self._throttled_at.pop(slice_id, None)
        if gone:
            self._cache = {k: c for k, c in self._cache.items() if c.verdict.slice_id not in gone}

    # reading the device ---------------------------------------------------------------------------

    def _refresh_inventory(self, now: float) -> bool:
        """Re-read the inventory and probe the tiers now and then; False if the device is unusable."""
        assert self.backend is not None
        if now - self._inventory_at < self.config.inventory_seconds and self._device_error is None:
            return True
        try:
            inventory = self.backend.inventory()
        except DeviceError as exc:
            self._device_down(str(exc))
            return False
        self._inventory_at = now
        self._device_up()
        self._learn(inventory)
        return True

    def _learn(self, inventory: DeviceInventory) -> None:
        assert self.backend is not None
        node = self.node_probe = self.probe()
        supported = self.backend.supports_driver_memory_limits
        for gpu in inventory.gpus:
            self._gpus[gpu.uuid] = gpu
            self._tiers[gpu.uuid] = gpu_tiers(
                mig_mode=gpu.mig_mode,
                node=node,
                driver_version=inventory.driver_version,
                driver_limits_supported=supported,
            )
        for index in inventory.lost:
            for gpu in self._gpus.values():
                if gpu.index == index:
                    self._gpu_lost(gpu.uuid, "the driver cannot read it")

    def _read(self, now: float) -> _Poll | None:
        assert self.backend is not None
        found = _Poll()
        for gpu in sorted(self._gpus.values(), key=lambda g: g.index):
            devices = [m.uuid for m in gpu.mig_instances] if gpu.mig_mode else [gpu.uuid]
            try:
                for device in devices:
                    found.readings[device] = self._read_device(device)
                self._read_utilization(gpu, now)
            except GpuLost as exc:
                self._gpu_lost(gpu.uuid, str(exc))
                for device in devices:
                    found.readings.pop(device, None)
                continue
            except DeviceUnavailable as exc:
                self._device_down(str(exc))
                return None
            except DeviceError as exc:  # this GPU cannot list processes: measure nothing on it
                if gpu.uuid not in self._unreadable:
                    self._unreadable.add(gpu.uuid)
                    log.warning("GPU %s: %s", gpu.uuid, exc)
                continue
            self._unreadable.discard(gpu.uuid)
            if gpu.uuid in self._lost:
                self._lost.discard(gpu.uuid)
                self.emit(
                    EnforcementEvent("GpuRecovered", f"GPU {gpu.uuid} can be read again", warning=False)
                )
        self._attribute(found, now)
        return found

    def _read_device(self, device: str) -> _Reading:
        assert self.backend is not None
        procs = self.backend.processes(device)
        since = self._since.get(device)
        if since is None:
            since = self.wall() - self.config.poll_seconds
        samples = self.backend.process_utilization(device, since)
        if not samples.supported or samples.newest is None or samples.newest <= since:
            return _Reading(procs, None, 0.0, samples.supported)
        self._since[device] = samples.newest
        busy = {s.pid: min(max(s.sm_pct / 100.0, 0.0), 1.0) for s in samples.samples}
        return _Reading(procs, busy, samples.newest - since)

    def _read_utilization(self, gpu: GpuInfo, now: float) -> None:
        assert self.backend is not None
        at, _ = self._util.get(gpu.uuid, (float("-inf"), None))
        if now - at >= self.config.utilization_seconds:
            self._util[gpu.uuid] = (now, self.backend.device_utilization(gpu.uuid))

    def _gpu_lost(self, uuid: str, detail: str) -> None:
        if uuid not in self._lost:
            self._lost.add(uuid)
            log.warning("GPU %s lost: %s", uuid, detail)
            self.emit(EnforcementEvent("GpuLost", f"GPU {uuid} cannot be read: {detail}"))

    def _device_down(self, detail: str) -> None:
        if self._device_error is None:
            log.warning("the GPU device cannot be read: %s", detail)
            self.emit(EnforcementEvent("DeviceUnavailable", f"GPUs cannot be read: {detail}"))
        self._device_error = detail

    def _device_up(self) -> None:
        if self._device_error is not None:
            self.emit(EnforcementEvent("DeviceRecovered", "GPUs can be read again", warning=False))
        self._device_error = None

    # attribution ----------------------------------------------------------------------------------

    def _attribute(self, found: _Poll, now: float) -> None:
        shims = [SliceShim(s.slice_id, s.shim[0], s.shim[1], s.device_uuid) for s in self._specs.values()]
        gpu_of = {m.uuid: g.uuid for g in self._gpus.values() for m in g.mig_instances}
        for device, reading in found.readings.items():
            used = {p.pid: p.used_mib for p in reading.procs}
            verdicts: list[tuple[Attribution, int]] = []
            fresh: list[int] = []
            for pid in used:
                cached = self._cached(device, pid, now)
                if cached is not None:
                    verdicts.append((cached.verdict, cached.start_time))
                else:
                    fresh.append(pid)
            if fresh:
                verdicts.extend(self._attribute_fresh(device, fresh, shims, now))
            for verdict, start in verdicts:
                if verdict.slice_id is not None:
                    member = _Member(verdict.pid, start, used.get(verdict.pid))
                    found.members.setdefault(verdict.slice_id, []).append(member)
                else:
                    stray = Stray(verdict.pid, used.get(verdict.pid), verdict.reason, verdict.hint)
                    found.strays.setdefault(gpu_of.get(device, device), []).append((stray, start))
        seen = {(device, p.pid) for device, reading in found.readings.items() for p in reading.procs}
        self._cache = {k: c for k, c in self._cache.items() if k in seen}

    def _cached(self, device: str, pid: int, now: float) -> _Cached | None:
        """A verdict still good: a process stays in its slice for as long as it lives (orphans go to
        the shim, a subreaper), so once its time is up only its identity is checked again."""
        cached = self._cache.get((device, pid))
        if cached is None:
            return None
        if cached.expires <= now:
            info = self.read(pid)
            if info is None or info.start_time != cached.start_time:
                return None  # gone, or its pid now names another process
            cached.expires = now + self._ttl(pid)
        return cached

    def _ttl(self, pid: int) -> float:
        # spread over the interval, so that re-checks do not all fall in one poll
        return self.config.attribution_ttl_seconds * (0.5 + (pid % 101) / 200)

    def _attribute_fresh(
        self, device: str, pids: list[int], shims: list[SliceShim], now: float
    ) -> list[tuple[Attribution, int]]:
        table = snapshot(pids, read=lambda pid, with_hint=False: self.read(pid))
        by_cgroup = {
            s.slice_id: s.cgroup for s in self._specs.values() if s.cgroup and s.device_uuid == device
        }
        out = []
        for verdict in attribute(pids, shims, table, device):
            if not verdict.attributed and by_cgroup:  # a pod's process: by the cgroup it lives in
                [found] = attribute_live_by_cgroup([verdict.pid], by_cgroup)
                if found.slice_id is not None:
                    verdict = Attribution(verdict.pid, found.slice_id, f"in cgroup {found.cgroup}")
            info = table.get(verdict.pid)
            if info is None:
                continue  # exited while being read: it no longer holds anything
            if verdict.attributed:
                self._cache[(device, verdict.pid)] = _Cached(
                    now + self._ttl(verdict.pid), info.start_time, verdict
                )
            else:  # what its environment claims, for the humans reading the report
                claimed = self.read(verdict.pid, with_hint=True)
                verdict = replace(verdict, hint=claimed.slice_hint if claimed else None)
            out.append((verdict, info.start_time))
        return out

    # memory -----------------------------------------------------------------------------------------

    def _memory(self, found: _Poll, now: float) -> None:
        for spec in self._specs.values():
            members = found.members.get(spec.slice_id, [])
            used = _sum_used(members)
            for act in self.watchdog.observe(spec.slice_id, used, spec.memory_mib, spec.memory_policy, now):
                if act is Act.EXCEEDED:
                    self.emit(
                        EnforcementEvent("SliceMemoryExceeded", self._exceeded(spec, used), spec.slice_id)
                    )
                elif act is Act.TERM:
                    self.on_kill(
                        spec, f"used {used} MiB of its {spec.memory_mib} MiB slice on {spec.gpu_uuid}"
                    )
                    self.ledger.resume(spec.slice_id)  # a stopped process would not see its SIGTERM
                    self._signal(spec, members, signal.SIGTERM)
                elif act is Act.KILL:
                    self._signal(spec, members, signal.SIGKILL)

    def _exceeded(self, spec: SliceSpec, used: int | None) -> str:
        what = f"slice uses {used} MiB of its {spec.memory_mib} MiB on GPU {spec.gpu_uuid}"
        if spec.memory_policy != "kill":
            return f"{what}; reported only (the queue's memory policy is {spec.memory_policy})"
        grace = self.config.memory_grace_seconds
        return f"{what}; stopping its task: SIGTERM now, SIGKILL after {grace:g}s"

    def _signal(self, spec: SliceSpec, members: list[_Member], sig: int) -> None:
        if spec.task is not None:
            signal_group(spec.task, sig)
        if spec.cgroup and self.cgroup_root is not None:  # a pod: all of it, as the kubelet would
            signal_cgroup(spec.cgroup, sig, self.cgroup_root)
        for m in members:
            signal_process(m.pid, m.start_time, sig)

    # compute ----------------------------------------------------------------------------------------

    def _compute(self, found: _Poll, now: float) -> None:
        by_gpu: dict[str, list[SliceSpec]] = {}
        for spec in self._specs.values():
            by_gpu.setdefault(spec.gpu_uuid, []).append(spec)
        for specs in by_gpu.values():
            samples: list[ComputeSample] = []
            interval = 0.0
            for spec in specs:
                reading = found.readings.get(spec.device_uuid)
                if reading is None or not reading.supported:
                    self.ledger.resume(spec.slice_id)  # what cannot be measured is never held stopped
                    continue
                if reading.busy is None:
                    continue  # no new samples yet (NVML samples every 1/6 s or so): keep as is
                interval = max(interval, reading.interval)
                busy = min(
                    1.0, sum(reading.busy.get(m.pid, 0.0) for m in found.members.get(spec.slice_id, []))
                )
                meter = self._meters.setdefault(spec.slice_id, ShareMeter(self.config.window_seconds))
                stopped = reading.interval if self.duty.stopped(spec.slice_id) else 0.0
                meter.add(reading.interval, busy, stopped)
                throttle = (
                    self._slice_tiers[spec.slice_id].compute == "throttle"
                    and self.watchdog.state(spec.slice_id) is None
                )
                samples.append(
                    ComputeSample(
                        spec.slice_id,
                        spec.compute_pct / 100.0,
                        busy,
                        throttle=throttle,
                        strict=spec.compute_policy == "strict",
                    )
                )
            if not samples or interval <= 0:
                continue
            for slice_id, stop in self.duty.step(samples, interval, now).items():
                self._apply_duty(self._specs[slice_id], stop, found, now)

    def _apply_duty(self, spec: SliceSpec, stop: bool, found: _Poll, now: float) -> None:
        if not stop:
            if self.ledger.stopped(spec.slice_id):
                self.ledger.resume(spec.slice_id)
            return
        procs = [(m.pid, m.start_time) for m in found.members.get(spec.slice_id, [])]
        self.ledger.stop(spec.slice_id, procs)
        last = self._throttled_at.get(spec.slice_id)
        if last is None or now - last >= self.config.throttle_event_seconds:
            meter = self._meters.get(spec.slice_id)
            share = meter.share_pct if meter else None
            measured = (
                ""
                if share is None
                else f" (measured {share:g}% over the last {self.config.window_seconds:g}s)"
            )
            self.emit(
                EnforcementEvent(
                    "Throttled",
                    f"duty-cycled to its {spec.compute_pct:g}% compute share on {spec.gpu_uuid}{measured}",
                    spec.slice_id,
                    warning=False,
                )
            )
        self._throttled_at[spec.slice_id] = now

    # strays -----------------------------------------------------------------------------------------

    def _handle_strays(self, found: _Poll, now: float) -> None:
        seen: set[tuple[str, int]] = set()
        grace = self.config.unattributed_grace_seconds
        for gpu, strays in found.strays.items():
            for stray, start in strays:
                key = (gpu, stray.pid)
                seen.add(key)
                state = self._strays.get(key)
                if state is None or state.start_time != start:
                    state = self._strays[key] = _StrayState(first_seen=now, start_time=start)
                if now - state.first_seen < grace:
                    continue  # a process between fork and its shim's notice, or a read race
                if not state.reported:
                    state.reported = True
                    self.emit(
                        EnforcementEvent("UnattributedProcess", _stray_message(gpu, stray, self.config))
                    )
                if self.config.unattributed == "kill":
                    self._kill_stray(gpu, stray, state, now)
        self._strays = {k: v for k, v in self._strays.items() if k in seen}

    def _kill_stray(self, gpu: str, stray: Stray, state: _StrayState, now: float) -> None:
        if state.termed_at is None:
            state.termed_at = now
            if signal_process(stray.pid, state.start_time, signal.SIGTERM):
                self.emit(
                    EnforcementEvent(
                        "UnattributedProcessKilled", f"SIGTERM to pid {stray.pid} on GPU {gpu} (node policy)"
                    )
                )
        elif now - state.termed_at >= self.config.memory_grace_seconds:
            signal_process(stray.pid, state.start_time, signal.SIGKILL)

    # the report -------------------------------------------------------------------------------------

    def _tier(self, spec: SliceSpec) -> SliceTier:
        tiers = self._tiers.get(spec.gpu_uuid, GpuTiers())
        throttle = spec.compute_policy in ("throttle", "strict") and spec.may_throttle
        return slice_tier(tiers, mig_instance=spec.mig_instance is not None, throttle=throttle)

    def _publish(self, found: _Poll, at: float) -> Snapshot:
        slices = []
        for spec in self._specs.values():
            members = found.members.get(spec.slice_id, [])
            meter = self._meters.get(spec.slice_id)
            state = self.watchdog.state(spec.slice_id) or (
                "throttled" if self.ledger.stopped(spec.slice_id) else "ok"
            )
            slices.append(
                SliceStatus(
                    spec=spec,
                    tier=self._slice_tiers.get(spec.slice_id) or self._tier(spec),
                    used_mib=_sum_used(members) if spec.device_uuid in found.readings else None,
                    share_pct=meter.share_pct if meter else None,
                    throttled_pct=meter.throttled_pct if meter else 0.0,
                    processes=len(members),
                    state=state,
                )
            )
        gpus = []
        for gpu in sorted(self._gpus.values(), key=lambda g: g.index):
            devices = [m.uuid for m in gpu.mig_instances] if gpu.mig_mode else [gpu.uuid]
            readings = [found.readings[d] for d in devices if d in found.readings]
            used = _sum_used([_Member(p.pid, 0, p.used_mib) for r in readings for p in r.procs])
            gpus.append(
                GpuStatus(
                    info=gpu,
                    tiers=self._tiers.get(gpu.uuid, GpuTiers()),
                    used_mib=used if readings else None,
                    utilization_pct=self._util.get(gpu.uuid, (0.0, None))[1],
                    lost=gpu.uuid in self._lost,
                    strays=tuple(s for s, _ in found.strays.get(gpu.uuid, [])),
                )
            )
        return Snapshot(
            at=at,
            device=self.backend.kind if self.backend else "none",
            device_error=self._device_error,
            gpus=tuple(gpus),
            slices=tuple(slices),
        )


def _sum_used(members: list[_Member]) -> int | None:
    if any(m.used_mib is None for m in members):
        return None  # the driver did not say for one of them: the total is unknown
    return sum(m.used_mib or 0 for m in members)


def _stray_message(gpu: str, stray: Stray, config: EnforcerConfig) -> str:
    held = "an unknown amount of memory" if stray.used_mib is None else f"{stray.used_mib} MiB"
    claim = f"; its environment claims slice {stray.hint}, which decides nothing" if stray.hint else ""
    action = "it will be stopped (node policy)" if config.unattributed == "kill" else "reported only"
    return (
        f"pid {stray.pid} on GPU {gpu} holds {held} and belongs to no slice ({stray.reason}){claim}; {action}"
    )
