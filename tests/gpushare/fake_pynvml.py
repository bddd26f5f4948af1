"""A stand-in for the ``pynvml`` module, used only by tests of the NVML backend.

It exposes the functions, constants and exception that `tessera.gpushare.nvml` uses, with pynvml's
shapes (objects with the C structs' field names, bytes where pynvml returns bytes, errors as
``NVMLError(code)`` with ``.value``), over a machine described by `FakeGpu` objects. Install it with
``monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)`` after `reset(...)`; every call made is
recorded in `CALLS` so a test can check that nothing but reads happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_NVLINK_MAX_LINKS = 18
NVML_NVLINK_DEVICE_TYPE_GPU = 0
NVML_NVLINK_DEVICE_TYPE_SWITCH = 2

_MIB = 1024 * 1024


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value}"


@dataclass
class FakeMig:
    uuid: str
    name: str
    memory_mib: int
    gpu_instance_id: int
    compute_instance_id: int
    gpu_slices: int = 1
    compute_slices: int = 1


@dataclass
class FakeLink:
    remote_bus: str  # NVML spelling, e.g. "00000000:08:00.0"
    active: bool = True
    remote_type: int = NVML_NVLINK_DEVICE_TYPE_GPU


@dataclass
class FakeGpu:
    uuid: str
    name: str
    memory_mib: int
    bus_id: str  # NVML spelling
    sm_count: int | None = 132
    numa_node: int | None = None  # None: nvmlDeviceGetNumaNodeId is not supported
    links: list[FakeLink] = field(default_factory=list)
    mig_mode: bool = False
    migs: dict[int, FakeMig] = field(default_factory=dict)  # slot -> MIG device; other slots empty
    mig_slots: int = 7
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes or None)
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, timestamp us, sm %)
    utilization: int | None = 0  # None: not supported
    lost_after: int | None = None  # fall off the bus after this many more calls on this GPU


@dataclass
class _Machine:
    gpus: list[FakeGpu]
    driver: str = "550.54.15"
    cuda: int = 12040
    init_error: int | None = None


MACHINE = _Machine(gpus=[])
CALLS: list[str] = []


def reset(gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
    """Describe the machine the next calls see, and forget the calls made so far."""
    MACHINE.gpus = gpus
    MACHINE.init_error = init_error
    CALLS.clear()


@dataclass(frozen=True)
class _Handle:
    gpu: int
    mig_slot: int | None = None


def _gpu(name: str, handle: _Handle) -> FakeGpu:
    CALLS.append(name)
    gpu = MACHINE.gpus[handle.gpu]
    if gpu.lost_after is not None:
        if gpu.lost_after <= 0:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        gpu.lost_after -= 1
    return gpu


def _mig(name: str, handle: _Handle) -> FakeMig:
    gpu = _gpu(name, handle)
    assert handle.mig_slot is not None, f"{name} needs a MIG device handle"
    return gpu.migs[handle.mig_slot]


def nvmlInit() -> None:
    CALLS.append("nvmlInit")
    if MACHINE.init_error is not None:
        raise NVMLError(MACHINE.init_error)


def nvmlShutdown() -> None:
    CALLS.append("nvmlShutdown")


def nvmlSystemGetDriverVersion() -> str:
    CALLS.append("nvmlSystemGetDriverVersion")
    return MACHINE.driver


def nvmlSystemGetCudaDriverVersion() -> int:
    CALLS.append("nvmlSystemGetCudaDriverVersion")
    return MACHINE.cuda


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    CALLS.append("nvmlSystemGetCudaDriverVersion_v2")
    return MACHINE.cuda


def nvmlDeviceGetCount() -> int:
    CALLS.append("nvmlDeviceGetCount")
    return len(MACHINE.gpus)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    handle = _Handle(index)
    _gpu("nvmlDeviceGetHandleByIndex", handle)
    return handle


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    if handle.mig_slot is not None:
        return _mig("nvmlDeviceGetUUID", handle).uuid
    return _gpu("nvmlDeviceGetUUID", handle).uuid


def nvmlDeviceGetName(handle: _Handle) -> str:
    if handle.mig_slot is not None:
        return _mig("nvmlDeviceGetName", handle).name
    return _gpu("nvmlDeviceGetName", handle).name


def nvmlDeviceGetMemoryInfo(handle: _Handle) -> Any:
    if handle.mig_slot is not None:
        total = _mig("nvmlDeviceGetMemoryInfo", handle).memory_mib * _MIB
    else:
        total = _gpu("nvmlDeviceGetMemoryInfo", handle).memory_mib * _MIB
    return SimpleNamespace(total=total, free=total, used=0)


def nvmlDeviceGetAttributes(handle: _Handle) -> Any:
    if handle.mig_slot is not None:
        mig = _mig("nvmlDeviceGetAttributes", handle)
        return SimpleNamespace(
            multiprocessorCount=16 * mig.gpu_slices,
            gpuInstanceSliceCount=mig.gpu_slices,
            computeInstanceSliceCount=mig.compute_slices,
            memorySizeMB=mig.memory_mib,
        )
    gpu = _gpu("nvmlDeviceGetAttributes", handle)
    if gpu.sm_count is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return SimpleNamespace(
        multiprocessorCount=gpu.sm_count,
        gpuInstanceSliceCount=0,
        computeInstanceSliceCount=0,
        memorySizeMB=gpu.memory_mib,
    )


def nvmlDeviceGetPciInfo(handle: _Handle) -> Any:
    gpu = _gpu("nvmlDeviceGetPciInfo", handle)
    return SimpleNamespace(busId=gpu.bus_id.encode(), busIdLegacy=gpu.bus_id[4:].encode())


def nvmlDeviceGetNumaNodeId(handle: _Handle) -> int:
    gpu = _gpu("nvmlDeviceGetNumaNodeId", handle)
    if gpu.numa_node is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return gpu.numa_node


def _link(name: str, handle: _Handle, link: int) -> FakeLink:
    gpu = _gpu(name, handle)
    if link >= len(gpu.links):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED if not gpu.links else NVML_ERROR_INVALID_ARGUMENT)
    return gpu.links[link]


def nvmlDeviceGetNvLinkState(handle: _Handle, link: int) -> int:
    active = _link("nvmlDeviceGetNvLinkState", handle, link).active
    return NVML_FEATURE_ENABLED if active else NVML_FEATURE_DISABLED


def nvmlDeviceGetNvLinkRemoteDeviceType(handle: _Handle, link: int) -> int:
    return _link("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link).remote_type


def nvmlDeviceGetNvLinkRemotePciInfo(handle: _Handle, link: int) -> Any:
    bus = _link("nvmlDeviceGetNvLinkRemotePciInfo", handle, link).remote_bus
    return SimpleNamespace(busId=bus.encode())


def nvmlDeviceGetMigMode(handle: _Handle) -> list[int]:
    mode = (
        NVML_DEVICE_MIG_ENABLE if _gpu("nvmlDeviceGetMigMode", handle).mig_mode else NVML_DEVICE_MIG_DISABLE
    )
    return [mode, mode]


def nvmlDeviceGetMaxMigDeviceCount(handle: _Handle) -> int:
    return _gpu("nvmlDeviceGetMaxMigDeviceCount", handle).mig_slots


def nvmlDeviceGetMigDeviceHandleByIndex(handle: _Handle, index: int) -> _Handle:
    gpu = _gpu("nvmlDeviceGetMigDeviceHandleByIndex", handle)
    if index not in gpu.migs:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return _Handle(handle.gpu, index)


def nvmlDeviceGetGpuInstanceId(handle: _Handle) -> int:
    return _mig("nvmlDeviceGetGpuInstanceId", handle).gpu_instance_id


def nvmlDeviceGetComputeInstanceId(handle: _Handle) -> int:
    return _mig("nvmlDeviceGetComputeInstanceId", handle).compute_instance_id


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[Any]:
    gpu = _gpu("nvmlDeviceGetComputeRunningProcesses", handle)
    return [
        SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
        for pid, used in gpu.processes
    ]


def _samples(name: str, handle: _Handle, last_seen: int) -> list[Any]:
    gpu = _gpu(name, handle)
    if gpu.mig_mode:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    rows = [
        SimpleNamespace(pid=pid, timeStamp=stamp, smUtil=sm, memUtil=0, encUtil=0, decUtil=0)
        for pid, stamp, sm in gpu.samples
        if stamp > last_seen
    ]
    if not rows:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return rows


def nvmlDeviceGetProcessesUtilizationInfo(handle: _Handle, timeStamp: int) -> list[Any]:
    return _samples("nvmlDeviceGetProcessesUtilizationInfo", handle, timeStamp)


def nvmlDeviceGetProcessUtilization(handle: _Handle, timeStamp: int) -> list[Any]:
    return _samples("nvmlDeviceGetProcessUtilization", handle, timeStamp)


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> Any:
    gpu = _gpu("nvmlDeviceGetUtilizationRates", handle)
    if gpu.utilization is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return SimpleNamespace(gpu=gpu.utilization, memory=0)
