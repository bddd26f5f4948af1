"""The library a workload uses to run on a simulated GPU: allocate memory, run kernels.

A simulated GPU is a directory; its state is files that the workloads write and the simulated
backend (`tessera.gpushare.simulated`) reads, as a driver keeps state that NVML reads::

    <state_dir>/devices.json                 the inventory: uuid, index, model, memory_mib per GPU
    <state_dir>/gpus/<uuid>/token            the GPU's single execution token, a lease (holder, until,
                                             waiters) read and written under an flock held briefly
    <state_dir>/gpus/<uuid>/alloc.lock       held while a process checks capacity and allocates
    <state_dir>/gpus/<uuid>/lost             marker: the GPU "fell off the bus"
    <state_dir>/gpus/<uuid>/procs/<pid>-<start>.json   one record per process, replaced atomically

A kernel holds the token for its whole duration, so processes on one GPU take turns as they do on a
real one. The token is a lease that ends when the kernel's time is up, whether or not its process
still runs: a process stopped (SIGSTOP) in the middle of a kernel does not keep the GPU, as on a real
GPU the work already queued finishes and the next context runs. Waiters are served first come, first
served, skipping stopped ones.

Each record carries the process's memory, its cumulative busy time (ns) and its recent kernel
intervals (wall-clock ns), from which the backend computes per-process and device utilisation over
any recent window. Records of dead processes are ignored and removed, as the driver frees a process's
memory when it exits. Nothing here enforces slice limits: the device only measures. The only limit is
the physical one -- allocating past the GPU's memory fails, as on a real GPU.

The workload picks its GPU like CUDA does, from ``CUDA_VISIBLE_DEVICES`` (uuids or indices; the
first visible one), and finds the state directory in ``$TESSERA_SIM_DEVICE_DIR``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.gpushare.attribution import read_proc
from tessera.node.procs import is_alive, proc_start_time

STATE_DIR_ENV = "TESSERA_SIM_DEVICE_DIR"
RETAIN_NS = 5_000_000_000  # kernel intervals kept per process: utilisation windows up to 5 s are exact
_HANDOFF_NS = 500_000  # a waiter that is not first looks again this soon once the GPU is free
_MAX_WAIT_NS = 50_000_000  # and at least this often while it is held (a holder may die)


def _stopped(pid: int) -> bool:
    info = read_proc(pid)
    return info is not None and info.state in ("T", "t")


class SimGpuError(RuntimeError):
    """What a CUDA call would fail with: no such device, device lost, used from a forked child."""


class SimOutOfMemory(SimGpuError):
    """The GPU's physical memory is exhausted (not a slice limit: the device enforces none)."""


def gpu_dir(state_dir: Path, uuid: str) -> Path:
    if not uuid or "/" in uuid or uuid.startswith("."):
        raise SimGpuError(f"invalid simulated GPU uuid {uuid!r}")
    return state_dir / "gpus" / uuid


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace `path` with `doc` in one step: readers see the old or the new file, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(doc, separators=(",", ":")).encode()  # one write: json.dump writes piecemeal
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_devices(state_dir: Path) -> list[dict[str, Any]]:
    """The inventory the backend wrote: [{uuid, index, model, memory_mib}, ...]."""
    try:
        doc = json.loads((state_dir / "devices.json").read_text())
    except FileNotFoundError:
        raise SimGpuError(f"no simulated device in {state_dir} (is the node agent running?)") from None
    devices: list[dict[str, Any]] = doc["gpus"]
    return devices


@dataclass
class ProcRecord:
    """One process's state on one simulated GPU."""

    pid: int
    start_time: int
    gpu: str
    used_mib: int = 0
    busy_ns: int = 0
    intervals: list[tuple[int, int]] = field(default_factory=list)
    running_since: int | None = None
    running_until: int | None = None
    updated_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "gpu": self.gpu,
            "used_mib": self.used_mib,
            "busy_ns": self.busy_ns,
            "intervals": [list(i) for i in self.intervals],
            "running_since": self.running_since,
            "running_until": self.running_until,
            "updated_ns": self.updated_ns,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProcRecord:
        return cls(
            pid=int(doc["pid"]),
            start_time=int(doc["start_time"]),
            gpu=str(doc["gpu"]),
            used_mib=int(doc["used_mib"]),
            busy_ns=int(doc["busy_ns"]),
            intervals=[(int(a), int(b)) for a, b in doc["intervals"]],
            running_since=None if doc["running_since"] is None else int(doc["running_since"]),
            running_until=None if doc.get("running_until") is None else int(doc["running_until"]),
            updated_ns=int(doc["updated_ns"]),
        )

    def busy_intervals(self, start: int, end: int) -> list[tuple[int, int]]:
        """Kernel time inside [start, end], a kernel still running counted up to `end` (or its own end)."""
        spans = list(self.intervals)
        if self.running_since is not None:
            until = end if self.running_until is None else min(end, self.running_until)
            spans.append((self.running_since, until))
        out = []
        for a, b in spans:
            a, b = max(a, start), min(b, end)
            if b > a:
                out.append((a, b))
        return out


def record_name(pid: int, start_time: int) -> str:
    # The start time is in the name so that removing a dead pid's record can never remove the
    # record of a later process that reused the pid.
    return f"{pid}-{start_time}.json"


def read_records(gpu: Path, *, clean: bool = False) -> list[ProcRecord]:
    """Records of live processes on one GPU; with `clean`, remove those of dead processes."""
    out = []
    try:
        paths = list((gpu / "procs").glob("*.json"))
    except FileNotFoundError:
        return []
    for path in paths:
        try:
            record = ProcRecord.from_json(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # exited and removed between listing and reading
        if is_alive(record.pid, record.start_time):
            out.append(record)
        elif clean:
            path.unlink(missing_ok=True)
    if clean:
        _remove_stale_temporaries(gpu / "procs")
    return out


def _remove_stale_temporaries(procs: Path) -> None:
    """Remove half-written records left by processes killed while saving (``.<pid>-<start>.json.*``)."""
    for tmp in procs.glob(".*.tmp"):
        pid, _, start = tmp.name[1:].split(".", 1)[0].partition("-")
        if pid.isdigit() and start.isdigit() and not is_alive(int(pid), int(start)):
            tmp.unlink(missing_ok=True)


def resolve_visible(state_dir: Path, visible: str | None) -> dict[str, Any]:
    """The GPU a CUDA program would use: the first entry of CUDA_VISIBLE_DEVICES (uuid or index)."""
    devices = load_devices(state_dir)
    if visible is None:
        if not devices:
            raise SimGpuError("no simulated GPUs")
        return devices[0]
    first = visible.split(",")[0].strip()
    if not first:
        raise SimGpuError("CUDA_VISIBLE_DEVICES is empty: no GPU is visible")
    for device in devices:
        if first == device["uuid"] or (first.isdigit() and int(first) == device["index"]):
            return device
    raise SimGpuError(f"CUDA_VISIBLE_DEVICES names {first!r}, which is no simulated GPU in {state_dir}")


class SimGpu:
    """This process's context on one simulated GPU (like a CUDA context: one per process)."""

    def __init__(self, state_dir: Path, visible: str | None = None) -> None:
        device = resolve_visible(state_dir, visible)
        self.uuid: str = device["uuid"]
        self.memory_mib: int = int(device["memory_mib"])
        self.dir = gpu_dir(state_dir, self.uuid)
        self.pid = os.getpid()
        start_time = proc_start_time(self.pid)
        if start_time is None:
            raise SimGpuError("cannot read this process's start time from /proc")
        if not (self.dir / "procs").is_dir():
            raise SimGpuError(f"simulated GPU {self.uuid} has no state in {state_dir}")
        self._check_lost()
        self.record = ProcRecord(pid=self.pid, start_time=start_time, gpu=self.uuid)
        self.path = self.dir / "procs" / record_name(self.pid, start_time)
        if self.path.exists():
            raise SimGpuError(f"this process already has a context on {self.uuid}; use that one")
        self._token = os.open(self.dir / "token", os.O_RDWR | os.O_CREAT, 0o644)
        self._closed = False
        self._save()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimGpu:
        """Open the GPU that CUDA_VISIBLE_DEVICES names in the state dir $TESSERA_SIM_DEVICE_DIR."""
        env = os.environ if environ is None else environ
        state = env.get(STATE_DIR_ENV)
        if not state:
            raise SimGpuError(f"${STATE_DIR_ENV} is not set: this process was not given a simulated GPU")
        return cls(Path(state), env.get("CUDA_VISIBLE_DEVICES"))

    @property
    def used_mib(self) -> int:
        return self.record.used_mib

    def allocate(self, mib: int) -> None:
        """Hold `mib` more MiB; `SimOutOfMemory` if the GPU's memory (all processes) would overflow."""
        if mib < 0:
            raise ValueError("allocate a non-negative amount")
        self._check()
        with self._locked(self.dir / "alloc.lock"):
            others = sum(r.used_mib for r in read_records(self.dir) if r.pid != self.pid)
            free = self.memory_mib - others - self.record.used_mib
            if mib > free:
                raise SimOutOfMemory(
                    f"out of memory on {self.uuid}: tried to allocate {mib} MiB, {max(free, 0)} MiB free"
                )
            self.record.used_mib += mib
            self._save()

    def free(self, mib: int | None = None) -> None:
        """Release `mib` MiB (all of it when None)."""
        self._check()
        held = self.record.used_mib
        self.record.used_mib = 0 if mib is None else max(0, held - mib)
        self._save()

    def kernel(self, seconds: float) -> float:
        """Run a kernel: wait for the execution token, hold it `seconds`. Returns the busy time.

        The kernel takes exactly `seconds` of GPU time: if this process is late to notice that its
        time is up (stopped, or descheduled), the GPU has been free for others meanwhile.
        """
        self._check()
        length = max(round(seconds * 1e9), 0)
        start = self._acquire(length)
        until = start + length
        end = start
        try:
            self.record.running_since, self.record.running_until = start, until
            self._save(now=start)
            time.sleep(max(until - time.time_ns(), 0) / 1e9)
        finally:
            end = min(time.time_ns(), until)
            self._release(until)
            # The record is written after the token is released, which gives a waiting process the
            # token first: like a GPU's time-slicing, contending processes alternate.
            self._account(start, end)
        return (end - start) / 1e9

    def _acquire(self, length: int) -> int:
        """Wait for the token (first come, first served among running waiters); returns the start.

        Decisions are made outside the lock, which is held only to read the lease and to write it if
        nobody changed it meanwhile: a process stopped inside the lock would block every other one on
        the GPU, so the lock is held for as short a time as possible.
        """
        me = [self.pid, self.record.start_time]
        while True:
            self._check_lost()
            with self._mutex():
                lease = self._read_lease()
            now = time.time_ns()
            queue = [w for w in lease["queue"] if w == me or is_alive(w[0], w[1])]
            if me not in queue:
                queue.append(me)
            holder, until = lease["holder"], int(lease["until"])
            free = holder is None or until <= now or not is_alive(holder[0], holder[1])
            # a stopped waiter cannot use the GPU: the next running one goes first
            first = next(w for w in queue if w == me or not _stopped(w[0]))
            if free and first == me:
                queue.remove(me)
                if self._swap(lease, {"holder": me, "until": now + length, "queue": queue}):
                    return now
                continue  # someone else moved first: look again
            if queue != lease["queue"]:
                self._swap(lease, {"holder": holder, "until": until, "queue": queue})
            wait = _HANDOFF_NS if free else until - now
            time.sleep(min(max(wait, _HANDOFF_NS), _MAX_WAIT_NS) / 1e9)

    def _release(self, until: int) -> None:
        """End our lease now if it is still ours (an early end: the kernel was interrupted)."""
        if time.time_ns() >= until:
            return  # it ended by itself
        me = [self.pid, self.record.start_time]
        with self._mutex():
            lease = self._read_lease()
            now = time.time_ns()
            if lease["holder"] == me and int(lease["until"]) > now:
                self._write_lease({**lease, "until": now, "version": lease["version"] + 1})

    def _swap(self, seen: Mapping[str, Any], lease: dict[str, Any]) -> bool:
        """Write `lease` if the lease is still the one `seen` (compare and swap on its version)."""
        with self._mutex():
            if self._read_lease()["version"] != seen["version"]:
                return False
            self._write_lease({**lease, "version": seen["version"] + 1})
            return True

    @contextmanager
    def _mutex(self) -> Iterator[None]:
        fcntl.flock(self._token, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._token, fcntl.LOCK_UN)

    # The lease lives in the token file itself, read and written only under its lock: no rename per
    # kernel. A process killed in the middle of a write leaves a torn lease, read as "free".

    def _read_lease(self) -> dict[str, Any]:
        try:
            doc = json.loads(os.pread(self._token, 65536, 0) or b"{}")
            return {
                "holder": doc["holder"],
                "until": int(doc["until"]),
                "queue": list(doc["queue"]),
                "version": int(doc["version"]),
            }
        except (ValueError, KeyError, TypeError):
            return {"holder": None, "until": 0, "queue": [], "version": 0}

    def _write_lease(self, lease: Mapping[str, Any]) -> None:
        data = json.dumps(lease, separators=(",", ":")).encode()
        os.pwrite(self._token, data, 0)
        os.ftruncate(self._token, len(data))

    def _account(self, start: int, end: int) -> None:
        self.record.running_since = self.record.running_until = None
        self.record.busy_ns += end - start
        self.record.intervals = [i for i in self.record.intervals if i[1] >= end - RETAIN_NS]
        self.record.intervals.append((start, end))
        self._save(now=end)

    def close(self) -> None:
        """Release everything, as a process's exit frees its GPU memory."""
        if self._closed or os.getpid() != self.pid:
            return
        self._closed = True
        os.close(self._token)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SimGpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise SimGpuError("the simulated GPU context is closed")
        if os.getpid() != self.pid:
            raise SimGpuError("a simulated GPU context cannot be used in a forked child; open a new one")
        self._check_lost()

    def _check_lost(self) -> None:
        if (self.dir / "lost").exists():
            raise SimGpuError(f"GPU {self.dir.name} has fallen off the bus")

    def _save(self, now: int | None = None) -> None:
        self.record.updated_ns = time.time_ns() if now is None else now
        write_json_atomic(self.path, self.record.to_json())

    @staticmethod
    @contextmanager
    def _locked(path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
