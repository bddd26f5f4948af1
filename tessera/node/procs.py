"""Small Linux /proc helpers for supervising task processes (stdlib only).

A pid alone does not identify a process: the kernel reuses pids. Everywhere in the node we identify a
process by (pid, start time), where the start time is field 22 of /proc/<pid>/stat (clock ticks since
boot), which cannot change for the lifetime of a process and differs for a later process reusing the pid.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat that the node needs."""

    pid: int
    state: str
    ppid: int
    start_time: int


def read_stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None if the process does not exist (or vanished while reading).

    The comm field (2) is wrapped in parentheses but may itself contain spaces and parentheses, so the
    fixed fields are taken from after the *last* ')' rather than by splitting the whole line.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
        return None
    end = data.rfind(b")")
    if end < 0:
        return None
    rest = data[end + 1 :].split()
    # rest[0] is field 3 (state), rest[1] field 4 (ppid), so field N is rest[N - 3].
    try:
        return ProcStat(pid=pid, state=rest[0].decode(), ppid=int(rest[1]), start_time=int(rest[22 - 3]))
    except (IndexError, ValueError):
        return None


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if no such pid.

    A zombie still has its start time and it is returned: right after a child exits (before it is
    reaped) the caller can still record which process it was. Use `is_alive` to ask "is it running".
    """
    stat = read_stat(pid)
    return None if stat is None else stat.start_time


def is_alive(pid: int, start_time: int) -> bool:
    """True if `pid` exists, is not a zombie/dead, and is the same process (its start time matches)."""
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X", "x") and stat.start_time == start_time


def _all_stats() -> list[ProcStat]:
    stats: list[ProcStat] = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def descendants(root_pid: int) -> list[int]:
    """All live (non-zombie) descendants of `root_pid`, found by walking ppid links in /proc.

    This is a snapshot: processes forked during the scan may be missed, so callers that kill must
    re-scan until nothing is left.
    """
    children: dict[int, list[ProcStat]] = {}
    for stat in _all_stats():
        children.setdefault(stat.ppid, []).append(stat)
    result: list[int] = []
    stack = [root_pid]
    seen = {root_pid}
    while stack:
        for child in children.get(stack.pop(), []):
            if child.pid in seen:
                continue
            seen.add(child.pid)
            # Zombies are walked through (harmlessly) but not reported: they cannot be signalled.
            if child.state not in ("Z", "X", "x"):
                result.append(child.pid)
            stack.append(child.pid)
    return result


def set_child_subreaper() -> None:
    """Make this process a child subreaper: orphaned descendants are re-parented to us, not to init.

    That is what lets a supervisor find (and kill) daemons that a task double-forked away from its
    process group. Raises OSError if prctl fails.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
