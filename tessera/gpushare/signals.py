"""Signals to slice processes, and a ledger so that no process the node stopped stays stopped.

Every process is named by (pid, start time) and signalled through a pidfd opened before its start
time is checked, so a signal can never reach a later process that reused the pid.

Duty-cycling stops processes with SIGSTOP. Before any SIGSTOP the ledger file lists the process
(write-ahead), so whatever happens to the node agent next, the processes can be found and resumed:
the agent resumes them when a slice is released, when it exits (signal handlers, atexit), and at
start-up from a ledger a predecessor left; and a small watcher process (`tessera.gpushare.resumer`)
resumes them the moment the agent dies without a chance to clean up (kill -9).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

from tessera.gpushare.simhelper import write_json_atomic
from tessera.node.procs import is_alive

log = logging.getLogger(__name__)

Proc = tuple[int, int]
"""(pid, start time in clock ticks since boot)"""


def signal_process(pid: int, start_time: int, sig: int) -> bool:
    """Send `sig` to (pid, start_time) only; False if that process is gone (or not ours to signal)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        fd = -1  # a kernel without pidfds: check, then kill (a tiny race)
    try:
        if not is_alive(pid, start_time):
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def signal_group(leader: Proc, sig: int) -> bool:
    """Signal the process group led by `leader`, if the leader is still that process."""
    pid, start = leader
    if not is_alive(pid, start):
        return False
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class StopLedger:
    """The processes this node stopped, per slice, mirrored to a file before each stop."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stopped: dict[str, set[Proc]] = {}

    def stopped(self, slice_id: str) -> bool:
        return bool(self._stopped.get(slice_id))

    def stopped_slices(self) -> list[str]:
        return [s for s, procs in self._stopped.items() if procs]

    def stop(self, slice_id: str, procs: Iterable[Proc]) -> int:
        """SIGSTOP the processes (recorded first); returns how many were stopped."""
        wanted = set(procs)
        with self._lock:  # held while signalling: a concurrent resume_all must not run in between
            new = wanted - self._stopped.get(slice_id, set())
            if not new:
                return 0
            self._stopped.setdefault(slice_id, set()).update(new)
            self._save()
            return sum(1 for pid, start in sorted(new) if signal_process(pid, start, signal.SIGSTOP))

    def resume(self, slice_id: str) -> int:
        """SIGCONT what was stopped for `slice_id`; the ledger forgets them only afterwards."""
        with self._lock:
            procs = self._stopped.get(slice_id, set())
            if not procs:
                return 0
            resumed = sum(1 for pid, start in sorted(procs) if signal_process(pid, start, signal.SIGCONT))
            self._stopped.pop(slice_id, None)
            self._save()
        return resumed

    def resume_all(self) -> int:
        return sum(self.resume(s) for s in list(self._stopped))

    def recover(self) -> int:
        """Resume the processes a predecessor's ledger lists (it died without resuming them)."""
        if self.path is None:
            return 0
        try:
            doc = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return 0
        resumed = resume_listed(doc)
        with self._lock:
            self._save()
        return resumed

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {s: sorted([list(p) for p in procs]) for s, procs in self._stopped.items() if procs}
        write_json_atomic(self.path, {"stopped": doc})


def resume_listed(doc: object) -> int:
    """SIGCONT every (pid, start time) a ledger document lists; returns how many were resumed."""
    resumed = 0
    stopped = doc.get("stopped", {}) if isinstance(doc, dict) else {}
    for procs in stopped.values() if isinstance(stopped, dict) else ():
        for item in procs:
            try:
                pid, start = int(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                continue
            if signal_process(pid, start, signal.SIGCONT):
                resumed += 1
    return resumed
