"""GPU devices behind one read-only interface: inventory, per-process memory and utilisation.

Two backends implement `DeviceBackend`: NVML (`tessera.gpushare.nvml`, real GPUs through the optional
``nvidia-ml-py`` package) and the simulated device (`tessera.gpushare.simulated`). Both only *read*;
enforcing slice limits is the node agent's job.

Timestamps are seconds since the epoch (floats). NVML reports CPU timestamps in microseconds since
the epoch; the NVML backend converts both ways exactly (see `nvml._to_us`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tessera.api.cluster import Gpu


class DeviceError(Exception):
    """Base class of every device error."""


class DeviceUnavailable(DeviceError):
    """The device library or driver is missing or does not start (no GPUs can be read at all)."""


class GpuLost(DeviceError):
    """One GPU cannot be read: it fell off the bus, or no GPU has that uuid."""

    def __init__(self, gpu: str, detail: str) -> None:
        super().__init__(f"GPU {gpu}: {detail}")
        self.gpu = gpu


@dataclass(frozen=True)
class MigInstanceInfo:
    """One MIG device (GPU instance + compute instance) as CUDA sees it."""

    uuid: str
    profile: str  # e.g. "1g.18gb"
    memory_mib: int
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU. Fields the driver does not report are None."""

    uuid: str
    index: int
    model: str
    memory_mib: int
    sm_count: int | None = None
    nvlink_peers: tuple[str, ...] = ()
    numa_node: int | None = None
    mig_mode: bool = False
    mig_instances: tuple[MigInstanceInfo, ...] = ()

    def to_api(self, *, simulated: bool = False) -> Gpu:
        """The wire model the node agent reports to the control plane."""
        from tessera.api.cluster import Gpu, MigInstance

        return Gpu(
            uuid=self.uuid,
            index=self.index,
            model=self.model,
            memory_mib=self.memory_mib,
            sm_count=self.sm_count,
            numa_node=self.numa_node,
            nvlink_peers=list(self.nvlink_peers),
            mig_mode=self.mig_mode,
            mig_instances=[
                MigInstance(
                    uuid=m.uuid,
                    profile=m.profile,
                    memory_mib=m.memory_mib,
                    gpu_instance_id=m.gpu_instance_id,
                    compute_instance_id=m.compute_instance_id,
                )
                for m in self.mig_instances
            ],
            simulated=simulated,
        )


@dataclass(frozen=True)
class DeviceInventory:
    """What a backend sees. `lost` holds indices of GPUs that could not be read (fell off the bus)."""

    driver_version: str | None
    cuda_version: str | None
    gpus: tuple[GpuInfo, ...]
    lost: tuple[int, ...] = ()
    simulated: bool = False


@dataclass(frozen=True)
class ProcessMemory:
    """GPU memory held by one process; `used_mib` is None when the driver does not say."""

    pid: int
    used_mib: int | None


@dataclass(frozen=True)
class ProcessSample:
    """SM utilisation of one process over the sampled window and the time of its last sample."""

    pid: int
    sm_pct: float
    timestamp: float


@dataclass(frozen=True)
class ProcessSamples:
    """Per-process utilisation since the `since` a caller passed.

    `newest` is the timestamp to pass as `since` next time (unchanged when nothing new was sampled).
    `supported` is False when the device cannot report per-process utilisation at all (e.g. a GPU in
    MIG mode); `samples` is then empty, which is not the same as "every process idle".
    """

    samples: tuple[ProcessSample, ...]
    newest: float | None
    supported: bool = True

    def by_pid(self) -> dict[int, ProcessSample]:
        return {s.pid: s for s in self.samples}


class DeviceBackend(Protocol):
    """A read-only view of one machine's GPUs.

    Per-GPU calls take a GPU uuid (a MIG instance uuid too, for `processes`) and raise `GpuLost`
    when that GPU cannot be read. A process that exits while being read is skipped, never raised.
    """

    kind: str
    simulated: bool
    supports_driver_memory_limits: bool
    """The driver can report per-cgroup memory limits (read only: Tessera never sets them)."""

    def inventory(self) -> DeviceInventory: ...

    def processes(self, gpu_uuid: str) -> list[ProcessMemory]: ...

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples: ...

    def device_utilization(self, gpu_uuid: str) -> float | None:
        """Percent of recent time any kernel ran; None when the device does not report it (MIG mode)."""
        ...

    def workload_env(self) -> dict[str, str]:
        """What a workload's environment needs (besides CUDA_VISIBLE_DEVICES) to use this device."""
        ...

    def close(self) -> None: ...


SIM_DEVICE_DIR_ENV = "TESSERA_SIM_DEVICE_DIR"


def _open_nvml(simulate: str | None, node: str | None, state_dir: Path | None) -> DeviceBackend:
    from tessera.gpushare.nvml import NvmlBackend

    return NvmlBackend()


def _open_simulated(simulate: str | None, node: str | None, state_dir: Path | None) -> DeviceBackend:
    from tessera.gpushare.simulated import SimulatedBackend

    if not simulate:
        raise ValueError("the simulated device needs a GPU spec, e.g. simulate='2xA100-80GB'")
    if state_dir is None:
        env = os.environ.get(SIM_DEVICE_DIR_ENV)
        if not env:
            raise ValueError(
                f"the simulated device needs a state directory: state_dir or ${SIM_DEVICE_DIR_ENV}"
            )
        state_dir = Path(env)
    return SimulatedBackend(simulate, state_dir=state_dir, node=node)


def _open_auto(simulate: str | None, node: str | None, state_dir: Path | None) -> DeviceBackend:
    # Simulated GPUs replace real ones, never mix with them (as the node inventory does).
    if simulate:
        return _open_simulated(simulate, node, state_dir)
    return _open_nvml(simulate, node, state_dir)


BACKENDS: dict[str, Callable[[str | None, str | None, Path | None], DeviceBackend]] = {
    "nvml": _open_nvml,
    "simulated": _open_simulated,
    "auto": _open_auto,
}


def open_backend(
    kind: str = "auto",
    *,
    simulate: str | None = None,
    node: str | None = None,
    state_dir: Path | None = None,
) -> DeviceBackend:
    """Open a device backend by name.

    ``auto`` is the simulated device when `simulate` (``2xA100-80GB``) is given, else NVML.
    NVML without its library or driver raises `DeviceUnavailable` with an install hint. The simulated
    device keeps its state in `state_dir` (default ``$TESSERA_SIM_DEVICE_DIR``); `node` names its
    GPUs ``SIM-<node>-<index>`` as the node inventory does.
    """
    opener = BACKENDS.get(kind)
    if opener is None:
        raise ValueError(f"unknown device backend {kind!r}; valid: {', '.join(sorted(BACKENDS))}")
    return opener(simulate, node, state_dir)
