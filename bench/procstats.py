"""Process statistics from /proc for the benchmarks: RSS, PSS, CPU ticks, shim discovery."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # gone, or not ours to read
        return None


def shim_pids(home: Path) -> list[int]:
    """Live shim processes of the tasks under ``home`` (``--task-dir`` is always a resolved path)."""
    root = str(home.resolve()) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        raw = _read(f"/proc/{entry}/cmdline")
        if not raw:
            continue
        args = raw.rstrip(b"\0").decode(errors="replace").split("\0")
        if "tessera.node.shim" not in args or "--task-dir" not in args:
            continue
        at = args.index("--task-dir")
        if at + 1 < len(args) and args[at + 1].startswith(root):
            found.append(int(entry))
    return found


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        raw = _read(f"/proc/{pid}/task/{task}/children")
        out.extend(int(c) for c in (raw or b"").split())
    return out


def cpu_ticks(pid: int) -> int | None:
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    fields = raw.decode().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def status_kib(pid: int, key: str = "VmRSS") -> int | None:
    raw = _read(f"/proc/{pid}/status")
    for line in (raw or b"").decode().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def pss_kib(pid: int) -> int | None:
    raw = _read(f"/proc/{pid}/smaps_rollup")
    for line in (raw or b"").decode().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


@dataclass
class Usage:
    what: str
    processes: int
    rss_mib_mean: float
    rss_mib_max: float
    pss_mib: float | None
    cpu_pct: float


@dataclass
class Footprint:
    tasks: int
    window_s: float
    usages: list[Usage]


def sample(named: dict[str, int], shims: list[int], window: float, tasks: int) -> Footprint:
    """RSS every second and CPU% over ``window`` for each named process, and for the shims together."""
    ticks0 = {k: cpu_ticks(p) for k, p in named.items()}
    shim_ticks0 = {p: cpu_ticks(p) for p in shims}
    rss: dict[str, list[int]] = {k: [] for k in named}
    shim_rss: list[int] = []
    shim_pss = 0
    start = time.monotonic()
    while True:
        for key, pid in named.items():
            value = status_kib(pid)
            if value is not None:
                rss[key].append(value)
        if not shim_rss and time.monotonic() - start >= window / 2:  # the shims once, mid-window
            shim_rss = [v for v in (status_kib(p) for p in shims) if v is not None]
            shim_pss = sum(v for v in (pss_kib(p) for p in shims) if v is not None)
        if time.monotonic() - start >= window:
            break
        time.sleep(1.0)
    wall = time.monotonic() - start
    usages = []
    for key, pid in named.items():
        t0, t1 = ticks0[key], cpu_ticks(pid)
        cpu = (t1 - t0) / CLK_TCK / wall * 100 if t0 is not None and t1 is not None else math.nan
        values = rss[key] or [0]
        usages.append(
            Usage(
                key, 1, sum(values) / len(values) / 1024, max(values) / 1024, (pss_kib(pid) or 0) / 1024, cpu
            )
        )
    if shims:
        spent = 0
        for pid, t0 in shim_ticks0.items():
            t1 = cpu_ticks(pid)
            if t0 is not None and t1 is not None:
                spent += t1 - t0
        total = sum(shim_rss) / 1024
        usages.append(
            Usage("shims (all)", len(shims), total, total, shim_pss / 1024, spent / CLK_TCK / wall * 100)
        )
        n = max(1, len(shim_rss))
        usages.append(
            Usage(
                "shims (per shim)",
                1,
                total / n,
                max(shim_rss or [0]) / 1024,
                shim_pss / 1024 / n,
                spent / CLK_TCK / wall * 100 / max(1, len(shims)),
            )
        )
    return Footprint(tasks, wall, usages)
