"""Enforcement tiers: what each GPU offers, what each slice gets, and what a task's environment needs.

The tiers of DESIGN.md ("GPU sharing"), strongest first::

    mig          a MIG instance: memory and compute in hardware
    driver       driver memory limits per cgroup (nvmlDeviceGetMemoryLimits, R615+, cgroup v2)
    mps          an MPS control daemon runs: pinned memory limit, active thread percentage
    hami         HAMi-core's libvgpu.so is installed: CUDA calls checked, kernel launches throttled
    watchdog     always: NVML accounting, kill over the memory limit, measured share, duty-cycling
    cooperative  the torch hook caps the allocator, so the task meets a clean CUDA OOM first

Probing only reads. It never creates MIG instances, starts MPS or sets a driver limit; a slice claims a
tier only when that tier actually bounds it (Tessera never sets driver limits, so a slice never claims
``driver``: the GPU reports it as available).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MPS_PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
DEFAULT_MPS_PIPE = Path("/tmp/nvidia-mps")
MPS_DAEMON_COMM = "nvidia-cuda-mps"  # /proc/<pid>/comm of nvidia-cuda-mps-control (15 characters)
HAMI_LIBRARIES = (Path("/usr/local/vgpu/libvgpu.so"),)
DRIVER_LIMITS_MIN_DRIVER = 615
CGROUP_V2_MARKER = Path("/sys/fs/cgroup/cgroup.controllers")


@dataclass(frozen=True)
class NodeProbe:
    """What this machine offers besides the GPUs themselves."""

    mps: bool = False
    hami_library: str | None = None
    cgroup_v2: bool = False


def probe_node(
    *,
    environ: Mapping[str, str] | None = None,
    proc: Path = Path("/proc"),
    hami_libraries: Sequence[Path] = HAMI_LIBRARIES,
    cgroup_marker: Path = CGROUP_V2_MARKER,
) -> NodeProbe:
    """Look for an MPS control daemon, HAMi-core's library and cgroup v2 (reads only)."""
    env = os.environ if environ is None else environ
    return NodeProbe(
        mps=_mps_running(Path(env.get(MPS_PIPE_ENV) or DEFAULT_MPS_PIPE), proc),
        hami_library=next((str(p) for p in hami_libraries if p.is_file()), None),
        cgroup_v2=cgroup_marker.exists(),
    )


def _mps_running(pipe_dir: Path, proc: Path) -> bool:
    if (pipe_dir / "control").exists():
        return True
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return False
    for pid in entries:
        try:
            if (proc / pid / "comm").read_text().strip() == MPS_DAEMON_COMM:
                return True
        except OSError:
            continue
    return False


def driver_major(version: str | None) -> int | None:
    try:
        return int((version or "").split(".")[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class GpuTiers:
    """The tiers one GPU offers."""

    mig: bool = False
    driver_limits: bool = False
    mps: bool = False
    hami: bool = False

    @property
    def names(self) -> list[str]:
        offered = {"mig": self.mig, "driver": self.driver_limits, "mps": self.mps, "hami": self.hami}
        return [name for name, on in offered.items() if on] + ["watchdog", "cooperative"]

    @property
    def best(self) -> str:
        return self.names[0]


def gpu_tiers(
    *, mig_mode: bool, node: NodeProbe, driver_version: str | None, driver_limits_supported: bool
) -> GpuTiers:
    major = driver_major(driver_version)
    return GpuTiers(
        mig=mig_mode,
        driver_limits=driver_limits_supported
        and node.cgroup_v2
        and major is not None
        and major >= DRIVER_LIMITS_MIN_DRIVER,
        # MPS and HAMi-core share a GPU between processes; in MIG mode the instances do that
        mps=node.mps and not mig_mode,
        hami=node.hami_library is not None and not mig_mode,
    )


@dataclass(frozen=True)
class SliceTier:
    """What bounds one slice: `memory` and `compute` name the tier doing each."""

    memory: str
    compute: str
    cooperative: bool

    @property
    def name(self) -> str:
        """The slice's tier: the one bounding its memory (the watchdog unless something stronger)."""
        return self.memory


def slice_tier(gpu: GpuTiers, *, mig_instance: bool, throttle: bool) -> SliceTier:
    """The tiers a slice gets: `throttle` when its policy lets the watchdog duty-cycle it."""
    if mig_instance:
        return SliceTier(memory="mig", compute="mig", cooperative=False)
    if gpu.mps:
        return SliceTier(memory="mps", compute="mps", cooperative=True)
    if gpu.hami:
        return SliceTier(memory="hami", compute="hami", cooperative=True)
    return SliceTier(memory="watchdog", compute="throttle" if throttle else "measure", cooperative=True)


@dataclass(frozen=True)
class TaskSlice:
    """One of a task's GPU slices, in CUDA_VISIBLE_DEVICES order, with its GPU's tiers."""

    tiers: GpuTiers
    mig_instance: bool
    memory_mib: int
    compute_pct: float


def tier_env(slices: Sequence[TaskSlice], node: NodeProbe, base_env: Mapping[str, str]) -> dict[str, str]:
    """Settings a task needs for the MPS or HAMi-core tier, when every one of its GPUs offers it."""
    shared = [s for s in slices if not s.mig_instance]
    if not shared or len(shared) != len(slices):
        return {}
    env: dict[str, str] = {}
    if all(s.tiers.mps for s in shared):
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
            f"{i}={s.memory_mib}M" for i, s in enumerate(shared)
        )
        # one percentage per process: the smallest share among its GPUs
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = f"{min(s.compute_pct for s in shared):g}"
    elif all(s.tiers.hami for s in shared) and node.hami_library:
        preload = base_env.get("LD_PRELOAD")
        env["LD_PRELOAD"] = f"{node.hami_library}:{preload}" if preload else node.hami_library
        for i, s in enumerate(shared):
            env[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{s.memory_mib}m"
        env["CUDA_DEVICE_SM_LIMIT"] = f"{max(1, round(min(s.compute_pct for s in shared)))}"
    return env
