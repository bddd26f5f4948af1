"""Whether the disk holding task logs is full: the node's LogDiskFull condition.

Shims drop output they cannot write and record how much in their state (tessera/node/relay.py);
the agent reads those counts as it observes its tasks, and looks at the free space of the log
directory. Tasks keep running either way; the condition tells the control plane (and so users)
that their logs have holes.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from tessera.api.cluster import NodeCondition

LOG_DISK_FULL = "LogDiskFull"
MIN_FREE = 1 << 20  # bytes: below this the log disk counts as full


class LogDisk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._dropping: dict[str, int] = {}  # running task key -> bytes dropped, while it drops
        self._since: datetime | None = None

    def observe(self, key: str, dropped: int, error: str | None, running: bool) -> None:
        """What a task's shim recorded: bytes dropped in all, and why it drops now (None: it
        writes again)."""
        with self._lock:
            if running and error is not None:
                self._dropping[key] = dropped
            else:
                self._dropping.pop(key, None)

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def condition(self) -> NodeCondition | None:
        """LogDiskFull while the disk has under MIN_FREE bytes free or a running task's output is
        being dropped (until that task writes again, or ends); None otherwise."""
        free = self.free_bytes()
        with self._lock:
            dropping = dict(self._dropping)
        if (free is None or free >= MIN_FREE) and not dropping:
            self._since = None
            return None
        if self._since is None:
            self._since = datetime.now(UTC)
        said = f"{free} bytes free" if free is not None else "free space unknown"
        message = f"the task log disk ({self.root}) is full ({said}); tasks keep running"
        if dropping:
            message += (
                f"; output of {len(dropping)} task(s) is being dropped "
                f"({sum(dropping.values())} bytes so far)"
            )
        return NodeCondition(type=LOG_DISK_FULL, message=message, since=self._since)
