"""The simulated device backend: GPUs from config, measured from the files workloads write.

Workloads run "on" a simulated GPU through `tessera.gpushare.simhelper` (see its docstring for the
state directory's layout). This backend is the driver's side: it publishes the inventory, and reads
per-process memory and kernel time back, with the same interface and errors as the NVML backend.
Only measurement is simulated; whatever acts on the numbers (attribution, signals, events) is real.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tessera.gpushare.device import (
    DeviceInventory,
    GpuInfo,
    GpuLost,
    ProcessMemory,
    ProcessSample,
    ProcessSamples,
)
from tessera.gpushare.simhelper import (
    RETAIN_NS,
    STATE_DIR_ENV,
    gpu_dir,
    read_records,
    write_json_atomic,
)

DEVICE_WINDOW_NS = 1_000_000_000  # device utilisation covers the last second, like NVML's longest period
DEFAULT_PROCESS_WINDOW_NS = 1_000_000_000  # process utilisation window when the caller has no `since`


def simulated_gpu_infos(spec: str, node: str) -> list[GpuInfo]:
    """GPUs from ``2xA100-80GB,1xT4-16GB``, named ``SIM-<node>-<index>`` as the node inventory does."""
    # The spec form belongs to the settings; read its parser from there rather than keep a second one.
    from tessera.api.simulate import parse_simulated_gpus

    gpus: list[GpuInfo] = []
    for count, model, memory in parse_simulated_gpus(spec):
        for _ in range(count):
            index = len(gpus)
            gpus.append(GpuInfo(uuid=f"SIM-{node}-{index}", index=index, model=model, memory_mib=memory))
    return gpus


class SimulatedBackend:
    """`DeviceBackend` over a simulated device kept in `state_dir`.

    Opening it (again) only publishes the inventory: records of running workloads are kept, so a
    restarted node agent sees the tasks that outlived it, as NVML would.
    """

    kind = "simulated"
    simulated = True
    supports_driver_memory_limits = False

    def __init__(self, spec: str, *, state_dir: Path, node: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.node = node or socket.gethostname()
        self.gpus = simulated_gpu_infos(spec, self.node)
        self._by_uuid = {g.uuid: g for g in self.gpus}
        for gpu in self.gpus:
            (gpu_dir(self.state_dir, gpu.uuid) / "procs").mkdir(parents=True, exist_ok=True)
        devices = [
            {"uuid": g.uuid, "index": g.index, "model": g.model, "memory_mib": g.memory_mib}
            for g in self.gpus
        ]
        write_json_atomic(self.state_dir / "devices.json", {"node": self.node, "gpus": devices})

    def workload_env(self) -> dict[str, str]:
        """What a workload's environment needs (besides CUDA_VISIBLE_DEVICES) to find this device."""
        return {STATE_DIR_ENV: str(self.state_dir)}

    def inventory(self) -> DeviceInventory:
        lost = tuple(g.index for g in self.gpus if self._is_lost(g.uuid))
        gpus = tuple(g for g in self.gpus if g.index not in lost)
        return DeviceInventory(driver_version=None, cuda_version=None, gpus=gpus, lost=lost, simulated=True)

    def processes(self, gpu_uuid: str) -> list[ProcessMemory]:
        records = read_records(self._dir(gpu_uuid), clean=True)
        return sorted((ProcessMemory(r.pid, r.used_mib) for r in records), key=lambda p: p.pid)

    def process_utilization(self, gpu_uuid: str, since: float | None = None) -> ProcessSamples:
        """Each process's share of kernel time in (since, now]; windows older than 5 s are clipped."""
        records = read_records(self._dir(gpu_uuid), clean=True)
        now = time.time_ns()
        start = now - DEFAULT_PROCESS_WINDOW_NS if since is None else round(since * 1e9)
        start = max(start, now - RETAIN_NS)
        if start >= now:
            return ProcessSamples(samples=(), newest=since)
        length = now - start
        stamp = now / 1e9
        samples = []
        for r in sorted(records, key=lambda r: r.pid):
            busy = sum(b - a for a, b in r.busy_intervals(start, now))
            samples.append(ProcessSample(pid=r.pid, sm_pct=100.0 * busy / length, timestamp=stamp))
        return ProcessSamples(samples=tuple(samples), newest=stamp)

    def device_utilization(self, gpu_uuid: str) -> float:
        """Percent of the last second in which any process on the GPU ran a kernel."""
        records = read_records(self._dir(gpu_uuid), clean=True)
        now = time.time_ns()
        start = now - DEVICE_WINDOW_NS
        spans = sorted(span for r in records for span in r.busy_intervals(start, now))
        busy, reach = 0, start
        for a, b in spans:  # the union of the intervals: overlaps count once
            a = max(a, reach)
            if b > a:
                busy += b - a
                reach = b
        return 100.0 * busy / DEVICE_WINDOW_NS

    def lose_gpu(self, gpu_uuid: str) -> None:
        """Make a GPU "fall off the bus": reads raise `GpuLost`, workloads' calls fail."""
        if gpu_uuid not in self._by_uuid:
            raise GpuLost(gpu_uuid, "no such simulated GPU")
        (gpu_dir(self.state_dir, gpu_uuid) / "lost").touch()

    def restore_gpu(self, gpu_uuid: str) -> None:
        """Bring a lost GPU back (a simulated reset)."""
        if gpu_uuid not in self._by_uuid:
            raise GpuLost(gpu_uuid, "no such simulated GPU")
        (gpu_dir(self.state_dir, gpu_uuid) / "lost").unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release: the state belongs to the device, not to this reader."""

    def _is_lost(self, gpu_uuid: str) -> bool:
        return (gpu_dir(self.state_dir, gpu_uuid) / "lost").exists()

    def _dir(self, gpu_uuid: str) -> Path:
        if gpu_uuid not in self._by_uuid:
            raise GpuLost(gpu_uuid, "no such simulated GPU")
        if self._is_lost(gpu_uuid):
            raise GpuLost(gpu_uuid, "fell off the bus (simulated)")
        return gpu_dir(self.state_dir, gpu_uuid)
