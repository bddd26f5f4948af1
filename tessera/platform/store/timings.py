"""Cumulative histograms the store keeps about its writers (exposed by the metrics collector):
how long write transactions wait for SQLite's single writer slot and how long they hold it."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Timing:
    """A thread-safe cumulative histogram of durations, in seconds (Prometheus' layout)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # the last: +Inf
    total: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.total += seconds

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        with self._lock:
            counts, total = list(self.counts), self.total
        out, running = [], 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out, total


@dataclass
class WriterTimings:
    wait: Timing = field(default_factory=Timing)  # for the writer slot (SQLite only)
    held: Timing = field(default_factory=Timing)  # from the slot (or the transaction's start) to commit
