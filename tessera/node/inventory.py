"""What this machine offers: GPUs through NVML when present, else simulated ones or none."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tessera import __version__
from tessera.api.cluster import Gpu, NodeInventory

log = logging.getLogger(__name__)


def _host_memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def simulated_gpus(node: str, spec: str) -> list[Gpu]:
    """GPUs from ``2xA100-80GB,1xT4-16GB``; every one is labelled simulated."""
    from tessera.api.simulate import parse_simulated_gpus

    gpus: list[Gpu] = []
    for count, model, memory in parse_simulated_gpus(spec):
        for _ in range(count):
            index = len(gpus)
            gpus.append(
                Gpu(uuid=f"SIM-{node}-{index}", index=index, model=model, memory_mib=memory, simulated=True)
            )
    return gpus


def nvml_gpus() -> tuple[list[Gpu], str | None, str | None]:
    """Real GPUs through NVML; ([], None, None) when NVML or a GPU is absent."""
    try:
        import pynvml
    except ImportError:
        return [], None, None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s); no real GPUs", exc)
        return [], None, None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            gpus.append(
                Gpu(
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    index=index,
                    model=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_mib=int(memory),
                )
            )
        return gpus, _text(driver), f"{cuda // 1000}.{cuda % 1000 // 10}"
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def detect(node: str, simulate: str | None = None) -> NodeInventory:
    """This machine's inventory; simulated GPUs replace (never mix with) real ones."""
    cpu = float(len(os.sched_getaffinity(0)))
    memory = _host_memory_mib()
    if simulate:
        return NodeInventory(
            gpus=simulated_gpus(node, simulate),
            cpu=cpu,
            memory=memory,
            agent_version=__version__,
            simulated=True,
        )
    gpus, driver, cuda = nvml_gpus()
    return NodeInventory(
        gpus=gpus, cpu=cpu, memory=memory, driver_version=driver, cuda_version=cuda, agent_version=__version__
    )
