"""The memory watchdog: what to do about a slice over its memory limit, poll by poll (no side effects).

An episode starts the first poll a slice holds more than its limit: an event (SliceMemoryExceeded),
and under the ``kill`` policy SIGTERM to its processes at once, then SIGKILL once the grace period is
over, repeated every poll while any of them is left. Under ``report`` the episode is only reported,
and ends when the slice is back under its limit (the next overage is a new episode). A ``kill``
episode lasts until the slice is released: the task is going, even if it let go of the memory.
Unknown usage (the driver did not say) is never over the limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Act(enum.Enum):
    EXCEEDED = "exceeded"  # write the event
    TERM = "term"  # SIGTERM the slice's processes (its task's process group)
    KILL = "kill"  # SIGKILL them


@dataclass
class _Episode:
    began: float
    peak_mib: int
    termed_at: float | None = None
    killed: bool = False


@dataclass
class MemoryWatchdog:
    grace_seconds: float = 5.0
    _episodes: dict[str, _Episode] = field(default_factory=dict)

    def observe(
        self, slice_id: str, used_mib: int | None, limit_mib: int, policy: str, now: float
    ) -> list[Act]:
        """The actions for one slice at this poll."""
        episode = self._episodes.get(slice_id)
        over = used_mib is not None and used_mib > limit_mib
        if episode is None:
            if not over:
                return []
            assert used_mib is not None
            episode = self._episodes[slice_id] = _Episode(began=now, peak_mib=used_mib)
            if policy != "kill":
                return [Act.EXCEEDED]
            episode.termed_at = now
            return [Act.EXCEEDED, Act.TERM]
        if used_mib is not None:
            episode.peak_mib = max(episode.peak_mib, used_mib)
        if episode.termed_at is None:  # report only
            if not over:
                del self._episodes[slice_id]
            return []
        if now - episode.termed_at >= self.grace_seconds:
            episode.killed = True
            return [Act.KILL]
        return []

    def state(self, slice_id: str) -> str | None:
        """over-memory (reported), stopping (SIGTERM sent) or killed; None when within its limit."""
        episode = self._episodes.get(slice_id)
        if episode is None:
            return None
        if episode.killed:
            return "killed"
        return "stopping" if episode.termed_at is not None else "over-memory"

    def peak(self, slice_id: str) -> int | None:
        episode = self._episodes.get(slice_id)
        return None if episode is None else episode.peak_mib

    def forget(self, slice_id: str) -> None:
        self._episodes.pop(slice_id, None)
