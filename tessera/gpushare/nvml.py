"""The NVML device backend: real GPUs read through ``pynvml`` (the optional ``nvidia-ml-py`` package).

It only reads. No ``nvmlDeviceSet*`` call, no MIG, compute-mode or clock change is ever made here.

Errors per GPU: "GPU is lost", "unknown" and friends become `GpuLost`; "not supported" (and a function
the installed driver or binding lacks) leaves the field None. A missing library or driver is
`DeviceUnavailable`, raised when the backend opens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tessera.gpushare.device import (
    DeviceError,
    DeviceInventory,
    DeviceUnavailable,
    GpuInfo,
    GpuLost,
    MigInstanceInfo,
    ProcessMemory,
    ProcessSample,
    ProcessSamples,
)

INSTALL_HINT = "install the NVML binding: pip install 'tessera[nvml]' (nvidia-ml-py)"
_MIB = 1024 * 1024
_PROFILE = re.compile(r"(?:\d+c\.)?\d+g\.\d+gb(?:\+\w+)?", re.IGNORECASE)

# Error codes by name, looked up on the module at use: an old binding may lack the newer ones.
_LOST = ("GPU_IS_LOST", "UNKNOWN", "GPU_NOT_FOUND", "RESET_REQUIRED", "IRQ_ISSUE")
_ABSENT = ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND", "INVALID_ARGUMENT", "NO_PERMISSION")
_MEMORY_LIMIT_READERS = ("nvmlDeviceGetMemoryLimits", "nvmlDeviceGetMemoryLimits_v1")
_UNAVAILABLE = ("DRIVER_NOT_LOADED", "LIBRARY_NOT_FOUND", "LIB_RM_VERSION_MISMATCH", "UNINITIALIZED")


def _to_us(seconds: float) -> int:
    """Seconds since the epoch to NVML's microseconds; exact for values that came from `_to_s`."""
    return round(seconds * 1e6)


def _to_s(us: int) -> float:
    return us / 1e6


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def pci_bus_id(value: str | bytes) -> str:
    """Normalise NVML's ``00000000:07:00.0`` to the sysfs form ``0000:07:00.0`` (lower case)."""
    parts = _text(value).strip().rstrip("\0").lower().split(":")
    if len(parts) == 3:
        parts[0] = f"{int(parts[0], 16):04x}"
    return ":".join(parts)


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise DeviceUnavailable(f"NVML is not available: {INSTALL_HINT}") from None
    return pynvml


def mig_profile(name: str, attributes: Any) -> str:
    """The MIG profile ("1g.18gb") from the MIG device's name, else from its slices and memory."""
    match = _PROFILE.search(name)
    if match:
        return match.group(0).lower()
    if attributes is None:
        return "unknown"
    gpu_slices = int(attributes.gpuInstanceSliceCount)
    compute_slices = int(attributes.computeInstanceSliceCount)
    gb = max(1, round(int(attributes.memorySizeMB) / 1024))
    prefix = f"{compute_slices}c." if 0 < compute_slices < gpu_slices else ""
    return f"{prefix}{gpu_slices}g.{gb}gb"


@dataclass
class _RawGpu:
    """What one GPU said, before NVLink peers (which need every GPU's bus id) are resolved."""

    info: GpuInfo
    bus_id: str | None
    remote_buses: set[str] = field(default_factory=set)
    via_switch: bool = False


class NvmlBackend:
    """`DeviceBackend` over NVML. Pass `module` to use a stand-in for ``pynvml`` (tests)."""

    kind = "nvml"
    simulated = False

    def __init__(self, module: Any | None = None, *, sysfs: Path = Path("/sys")) -> None:
        nvml = _load_pynvml() if module is None else module
        self._nvml = nvml
        self._sysfs = sysfs
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise DeviceUnavailable(f"NVML did not start ({exc}); is the NVIDIA driver loaded?") from exc
        self._open = True
        self._handles: dict[str, Any] = {}
        # probed, never called here: the tier probe only reports that the driver has them
        self.supports_driver_memory_limits = any(
            getattr(nvml, fn, None) is not None for fn in _MEMORY_LIMIT_READERS
        )

    # --- error mapping -------------------------------------------------------------------------

    def _codes(self, names: Iterable[str]) -> set[int]:
        return {code for n in names if (code := getattr(self._nvml, f"NVML_ERROR_{n}", None)) is not None}

    def _call(self, gpu: str, fn: str, *args: Any) -> Any:
        """A read that must succeed: failures are `GpuLost` (or `DeviceUnavailable`)."""
        if not self._open:
            raise DeviceUnavailable("the NVML backend is closed")
        try:
            return getattr(self._nvml, fn)(*args)
        except self._nvml.NVMLError as exc:
            if exc.value in self._codes(_UNAVAILABLE):
                raise DeviceUnavailable(f"NVML: {exc}") from exc
            raise GpuLost(gpu, f"{fn}: {exc}") from exc

    def _optional(self, gpu: str, fn: str, *args: Any) -> Any:
        """A read the device may not support: None when it does not, `GpuLost` when the GPU is gone."""
        if getattr(self._nvml, fn, None) is None:
            return None  # an older binding without this function
        try:
            return self._call(gpu, fn, *args)
        except GpuLost as exc:
            cause = exc.__cause__
            if isinstance(cause, self._nvml.NVMLError) and cause.value in self._codes(_ABSENT):
                return None
            raise

    # --- inventory -------------------------------------------------------------------------------

    def inventory(self) -> DeviceInventory:
        driver = _text(self._call("system", "nvmlSystemGetDriverVersion"))
        cuda = self._optional("system", "nvmlSystemGetCudaDriverVersion_v2")
        if cuda is None:
            cuda = self._optional("system", "nvmlSystemGetCudaDriverVersion")
        count = int(self._call("system", "nvmlDeviceGetCount"))
        raws: list[_RawGpu] = []
        lost: list[int] = []
        handles: dict[str, Any] = {}
        for index in range(count):
            try:
                raw, gpu_handles = self._read_gpu(index)
            except GpuLost:
                lost.append(index)
                continue
            raws.append(raw)
            handles.update(gpu_handles)
        self._handles = handles
        return DeviceInventory(
            driver_version=driver,
            cuda_version=None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            gpus=tuple(_resolve_peers(raws)),
            lost=tuple(lost),
        )

    def _read_gpu(self, index: int) -> tuple[_RawGpu, dict[str, Any]]:
        label = f"#{index}"
        handle = self._call(label, "nvmlDeviceGetHandleByIndex", index)
        uuid = _text(self._call(label, "nvmlDeviceGetUUID", handle))
        memory = self._call(uuid, "nvmlDeviceGetMemoryInfo", handle)
        attributes = self._optional(uuid, "nvmlDeviceGetAttributes", handle)
        pci = self._optional(uuid, "nvmlDeviceGetPciInfo", handle)
        bus_id = None if pci is None else pci_bus_id(pci.busId)
        mode = self._optional(uuid, "nvmlDeviceGetMigMode", handle)
        mig_mode = mode is not None and mode[0] == self._nvml.NVML_DEVICE_MIG_ENABLE
        handles = {uuid: handle}
        migs: list[MigInstanceInfo] = []
        if mig_mode:
            for mig, mig_handle in self._read_migs(uuid, handle):
                migs.append(mig)
                handles[mig.uuid] = mig_handle
        raw = _RawGpu(
            info=GpuInfo(
                uuid=uuid,
                index=index,
                model=_text(self._call(uuid, "nvmlDeviceGetName", handle)),
                memory_mib=int(memory.total) // _MIB,
                sm_count=None if attributes is None else int(attributes.multiprocessorCount),
                numa_node=self._numa_node(uuid, handle, bus_id),
                mig_mode=mig_mode,
                mig_instances=tuple(migs),
            ),
            bus_id=bus_id,
        )
        self._read_nvlinks(raw, handle)
        return raw, handles

    def _numa_node(self, uuid: str, handle: Any, bus_id: str | None) -> int | None:
        node = self._optional(uuid, "nvmlDeviceGetNumaNodeId", handle)
        if node is None and bus_id is not None:
            try:
                node = int((self._sysfs / "bus/pci/devices" / bus_id / "numa_node").read_text())
            except (OSError, ValueError):
                return None
        return None if node is None or node < 0 else int(node)

    def _read_migs(self, uuid: str, handle: Any) -> list[tuple[MigInstanceInfo, Any]]:
        out = []
        slots = int(self._call(uuid, "nvmlDeviceGetMaxMigDeviceCount", handle))
        for slot in range(slots):
            try:
                mig = self._call(uuid, "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
            except GpuLost as exc:
                if isinstance(exc.__cause__, self._nvml.NVMLError) and exc.__cause__.value in self._codes(
                    ("NOT_FOUND", "INVALID_ARGUMENT")
                ):
                    continue  # an empty slot: no MIG device was created there
                raise
            name = _text(self._call(uuid, "nvmlDeviceGetName", mig))
            info = MigInstanceInfo(
                uuid=_text(self._call(uuid, "nvmlDeviceGetUUID", mig)),
                profile=mig_profile(name, self._optional(uuid, "nvmlDeviceGetAttributes", mig)),
                memory_mib=int(self._call(uuid, "nvmlDeviceGetMemoryInfo", mig).total) // _MIB,
                gpu_instance_id=int(self._call(uuid, "nvmlDeviceGetGpuInstanceId", mig)),
                compute_instance_id=int(self._call(uuid, "nvmlDeviceGetComputeInstanceId", mig)),
            )
            out.append((info, mig))
        return out

    def _read_nvlinks(self, raw: _RawGpu, handle: Any) -> None:
        uuid = raw.info.uuid
        links = int(getattr(self._nvml, "NVML_NVLINK_MAX_LINKS", 18))
        switch = getattr(self._nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
        for link in range(links):
            state = self._optional(uuid, "nvmlDeviceGetNvLinkState", handle, link)
            if state != self._nvml.NVML_FEATURE_ENABLED:
                continue
            if self._optional(uuid, "nvmlDeviceGetNvLinkRemoteDeviceType", handle, link) == switch:
                raw.via_switch = True  # an NVSwitch: every GPU on the switch fabric is a peer
                continue
            remote = self._optional(uuid, "nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
            if remote is not None:
                raw.remote_buses.add(pci_bus_id(remote.busId))

    # --- per GPU reads ---------------------------------------------------------------------------

    def _handle(self, gpu_uuid: str) -> Any:
        if gpu_uuid not in self._handles:
            self.inventory()  # a GPU that appeared since (or the first call): enumerate again
        handle = self._handles.get(gpu_uuid)
        if handle is None:
            raise GpuLost(gpu_uuid, "no GPU or MIG device with this uuid")
        return handle

    def processes(self, gpu_uuid: str) -> list[ProcessMemory]:
        handle = self._handle(gpu_uuid)
        procs = self._optional(gpu_uuid, "nvmlDeviceGetComputeRunningProcesses", handle)
        if procs is None:
            raise DeviceError(f"GPU {gpu_uuid}: the driver does not list compute processes")
        used: dict[int, int | None] = {}
        for p in procs:
            pid = int(p.pid)
            mib = None if p.usedGpuMemory is None else math.ceil(int(p.usedGpuMemory) / _MIB)
            if pid in used:  # one process in several MIG instances of this GPU: add them up
                held = used[pid]
                used[pid] = None if held is None or mib is None else held + mib
            else:
                used[pid] = mib
        return [ProcessMemory(pid, mib) for pid, mib in sorted(used.items())]

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples:
        """Per-process SM utilisation from samples newer than `since` (all the driver keeps if None).

        Uses nvmlDeviceGetProcessesUtilizationInfo where the driver has it, else
        nvmlDeviceGetProcessUtilization. A process's samples in the window are averaged.
        """
        handle = self._handle(gpu_uuid)
        last_seen = 0 if since is None else _to_us(since)
        rows = self._samples(gpu_uuid, "nvmlDeviceGetProcessesUtilizationInfo", handle, last_seen)
        if rows is None:
            rows = self._samples(gpu_uuid, "nvmlDeviceGetProcessUtilization", handle, last_seen)
        if rows is None:
            return ProcessSamples(samples=(), newest=since, supported=False)
        per_pid: dict[int, list[tuple[int, int]]] = {}
        for row in rows:
            stamp = int(row.timeStamp)
            if stamp > last_seen:
                per_pid.setdefault(int(row.pid), []).append((stamp, int(row.smUtil)))
        samples = tuple(
            ProcessSample(
                pid=pid,
                sm_pct=sum(util for _, util in seen) / len(seen),
                timestamp=_to_s(max(stamp for stamp, _ in seen)),
            )
            for pid, seen in sorted(per_pid.items())
        )
        newest = max((stamp for seen in per_pid.values() for stamp, _ in seen), default=None)
        return ProcessSamples(samples=samples, newest=since if newest is None else _to_s(newest))

    def _samples(self, gpu: str, fn: str, handle: Any, last_seen: int) -> list[Any] | None:
        """Rows from one sampling function; [] when there are none, None when it is unsupported."""
        if getattr(self._nvml, fn, None) is None:
            return None
        try:
            return list(self._call(gpu, fn, handle, last_seen))
        except GpuLost as exc:
            cause = exc.__cause__
            if not isinstance(cause, self._nvml.NVMLError):
                raise
            if cause.value in self._codes(("NOT_FOUND",)) or cause.value == self._nvml.NVML_SUCCESS:
                return []  # no samples since last_seen (pynvml raises on a successful empty read)
            if cause.value in self._codes(_ABSENT):
                return None
            raise

    def device_utilization(self, gpu_uuid: str) -> float | None:
        rates = self._optional(gpu_uuid, "nvmlDeviceGetUtilizationRates", self._handle(gpu_uuid))
        return None if rates is None else float(rates.gpu)

    def workload_env(self) -> dict[str, str]:
        """Nothing: CUDA finds a real GPU by itself."""
        return {}

    def close(self) -> None:
        if self._open:
            self._open = False
            self._handles = {}
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # nothing left to release if the driver went away


def _resolve_peers(raws: list[_RawGpu]) -> list[GpuInfo]:
    by_bus = {r.bus_id: r.info.uuid for r in raws if r.bus_id is not None}
    switched = [r.info.uuid for r in raws if r.via_switch]
    out = []
    for r in raws:
        peers = {by_bus[b] for b in r.remote_buses if b in by_bus}
        if r.via_switch:
            peers.update(switched)
        peers.discard(r.info.uuid)
        out.append(replace(r.info, nvlink_peers=tuple(sorted(peers))))
    return out
