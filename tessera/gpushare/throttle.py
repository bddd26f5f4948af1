"""Compute shares: measured per slice over a sliding window, and duty-cycling those over their share.

`ShareMeter` keeps what a slice's processes ran (and how long they were stopped) over the last
window; it is always reported. `DutyCycle` decides, each poll and for one GPU, which slices run and
which are stopped (SIGSTOP) for the next interval. It is a credit account per slice: a slice earns
its share of every interval and pays for the kernel time it used. A slice whose credit runs out is
stopped until it has earned it back, so over time it gets its share and not more:

* only slices whose policy allows it are ever stopped (``throttle`` or ``strict``; never a gang's
  member or a service's replica, never a slice a hardware tier already holds to its share);
* under ``throttle`` a slice is stopped only while another slice on its GPU is busy (has run a kernel
  within `idle_seconds`): a slice alone on its GPU may use all of it, and the debt it ran up alone
  is forgiven. ``strict`` holds a slice to its share even when it is alone;
* credit is bounded: a slice idle for a while may burst for up to `burst_seconds` of its share, and
  a slice in debt is never stopped for longer than about `debt_seconds`;
* a small deadband keeps slices near their share from being stopped and resumed every poll.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ComputeSample:
    """One slice on one GPU over the last interval."""

    slice_id: str
    limit: float  # its share, 0..1
    busy: float  # the fraction of the interval its processes ran kernels, 0..1
    throttle: bool = False  # may be duty-cycled
    strict: bool = False  # ...even when alone on its GPU


class ShareMeter:
    """A slice's kernel time and stopped time over a sliding window."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._spans: deque[tuple[float, float, float]] = deque()  # (length, busy time, stopped time)
        self._length = self._busy = self._stopped = 0.0

    def add(self, length: float, busy: float, stopped: float = 0.0) -> None:
        """Record an interval of `length` seconds: `busy` of them running kernels, `stopped` stopped."""
        if length <= 0:
            return
        self._spans.append((length, busy * length, stopped))
        self._length += length
        self._busy += busy * length
        self._stopped += stopped
        while self._spans and self._length - self._spans[0][0] >= self.window - 1e-9:
            old, busy_time, stopped_time = self._spans.popleft()
            self._length -= old
            self._busy -= busy_time
            self._stopped -= stopped_time

    @property
    def share_pct(self) -> float | None:
        return None if self._length <= 0 else round(max(0.0, 100.0 * self._busy / self._length), 2)

    @property
    def throttled_pct(self) -> float:
        return 0.0 if self._length <= 0 else round(min(100.0, 100.0 * self._stopped / self._length), 2)


@dataclass
class _Account:
    credit: float = 0.0
    last_busy: float = float("-inf")
    stopped: bool = False


@dataclass
class DutyCycle:
    burst_seconds: float = 1.0
    debt_seconds: float = 2.0
    deadband_seconds: float = 0.02
    idle_seconds: float = 1.0
    _accounts: dict[str, _Account] = field(default_factory=dict)

    def step(self, samples: list[ComputeSample], length: float, now: float) -> dict[str, bool]:
        """For the slices of one GPU: True for each that should be stopped for the next interval."""
        accounts = {s.slice_id: self._accounts.setdefault(s.slice_id, _Account()) for s in samples}
        for s in samples:
            account = accounts[s.slice_id]
            if s.busy > 0:
                account.last_busy = now
            earned = account.credit + (s.limit - s.busy) * length
            account.credit = min(max(earned, -self.debt_seconds * s.limit), self.burst_seconds * s.limit)

        def contending(slice_id: str) -> bool:
            other = accounts[slice_id]
            if other.stopped:
                return other.credit >= 0  # about to run again
            return now - other.last_busy <= self.idle_seconds

        decisions: dict[str, bool] = {}
        for s in samples:
            account = accounts[s.slice_id]
            if not s.throttle:
                decisions[s.slice_id] = False
                continue
            contended = s.strict or any(contending(o.slice_id) for o in samples if o is not s)
            if not contended:
                account.credit = max(account.credit, 0.0)  # alone: nothing to pay back to anyone
                decisions[s.slice_id] = False
            elif account.stopped:
                decisions[s.slice_id] = account.credit < 0
            else:
                decisions[s.slice_id] = account.credit < -self.deadband_seconds
        for slice_id, stop in decisions.items():
            accounts[slice_id].stopped = stop
        return decisions

    def stopped(self, slice_id: str) -> bool:
        account = self._accounts.get(slice_id)
        return account is not None and account.stopped

    def forget(self, slice_id: str) -> None:
        self._accounts.pop(slice_id, None)
