"""GPU devices (NVML, simulated), the reference workload, and slice attribution.

Open a device with `open_backend`; everything it returns is described in `tessera.gpushare.device`.
"""

from tessera.gpushare.device import (
    BACKENDS,
    DeviceBackend,
    DeviceError,
    DeviceInventory,
    DeviceUnavailable,
    GpuInfo,
    GpuLost,
    MigInstanceInfo,
    ProcessMemory,
    ProcessSample,
    ProcessSamples,
    open_backend,
)

__all__ = [
    "BACKENDS",
    "DeviceBackend",
    "DeviceError",
    "DeviceInventory",
    "DeviceUnavailable",
    "GpuInfo",
    "GpuLost",
    "MigInstanceInfo",
    "ProcessMemory",
    "ProcessSample",
    "ProcessSamples",
    "open_backend",
]
