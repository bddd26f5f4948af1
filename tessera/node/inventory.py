"""What this machine offers, read from its GPU device: NVML, the simulated device, or none."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tessera import __version__
from tessera.api.cluster import NodeInventory
from tessera.gpushare.device import DeviceBackend, DeviceError, DeviceUnavailable, open_backend

log = logging.getLogger(__name__)
SIM_DEVICE_DIR = "simdevice"
"""The simulated device's state, under the agent's state directory (tasks find it through the env)."""


def _host_memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def open_device(node: str, state_dir: Path, simulate: str | None = None) -> DeviceBackend | None:
    """The simulated device when `simulate` names GPUs (``2xA100-80GB``), else NVML, else none.

    Simulated GPUs replace real ones, never mix with them. A machine without NVML (no library, no
    driver) is a node without GPUs: that is logged, not fatal. A bad `simulate` raises ValueError.
    """
    if simulate:
        return open_backend("simulated", simulate=simulate, node=node, state_dir=state_dir / SIM_DEVICE_DIR)
    try:
        return open_backend("nvml")
    except DeviceUnavailable as exc:
        log.info("no GPUs: %s", exc)
        return None


def detect(device: DeviceBackend | None) -> NodeInventory:
    """This machine's inventory: CPU and memory from the OS, GPUs (and MIG instances) from `device`."""
    cpu = float(len(os.sched_getaffinity(0)))
    memory = _host_memory_mib()
    if device is None:
        return NodeInventory(cpu=cpu, memory=memory, agent_version=__version__)
    try:
        found = device.inventory()
    except DeviceError as exc:
        log.warning("cannot read the GPUs (%s); registering none for now", exc)
        return NodeInventory(cpu=cpu, memory=memory, agent_version=__version__, simulated=device.simulated)
    if found.lost:
        log.warning("GPU(s) at index %s cannot be read and are left out", list(found.lost))
    return NodeInventory(
        gpus=[g.to_api(simulated=found.simulated) for g in found.gpus],
        cpu=cpu,
        memory=memory,
        driver_version=found.driver_version,
        cuda_version=found.cuda_version,
        agent_version=__version__,
        simulated=found.simulated,
    )
