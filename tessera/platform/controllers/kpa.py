"""The autoscaler's decision core, modelled on the Knative Serving autoscaler (KPA): pure numbers,
no database, no I/O and no wall clock (``now`` is passed in, in float seconds).

Gateways report, per revision, the time-averaged concurrency (in-flight requests, held ones
included) over each report interval; a :class:`ConcurrencyWindow` keeps them in 1-second buckets
and averages them over the stable and panic windows. :func:`decide` turns those averages into a
desired replica count, following the KPA rules (see the Knative docs, "Configuring the
autoscaler" / "Scale bounds" / "Scale to zero"):

* stable: ``desired = ceil(stable average / target_concurrency)``;
* panic: when ``panic average / target / max(ready, 1) >= panic_threshold`` the revision panics:
  ``desired = max(stable, ceil(panic average / target), current, highest desired so far in this
  panic)``, so it scales up fast and never down; every tick over the threshold re-arms the panic,
  which ends once a whole stable window has passed since it last triggered;
* a request held at a gateway (no ready replica) means ``desired >= 1`` at once (scale from zero);
* the last replica goes only when nothing is held and the revision has been idle (stable average
  0, nothing held) for ``max(scale_to_zero_grace, 1.5 * cold_start_s)`` -- always longer than a
  replica takes to start; until then a running revision keeps 1;
* the result is clamped to ``[min_replicas, max_replicas]``; ``min_replicas`` applies only to an
  active revision (one that gets traffic), so a revision at 0% scales to zero once idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

IDLE_EPSILON = 1e-9
"""A concurrency at or below this is no traffic."""
_CEIL_SLACK = 1e-9  # so that 20.000000001 / 10 is still 2 replicas


class ScaleSpec(Protocol):
    """The scaling fields of a revision's spec; :class:`tessera.api.serving.ServiceSpec` has them."""

    @property
    def min_replicas(self) -> int: ...
    @property
    def max_replicas(self) -> int: ...
    @property
    def target_concurrency(self) -> float: ...
    @property
    def stable_window(self) -> timedelta: ...
    @property
    def panic_window(self) -> timedelta: ...
    @property
    def panic_threshold(self) -> float: ...
    @property
    def scale_to_zero_grace(self) -> timedelta: ...


@dataclass
class _GatewaySeries:
    buckets: dict[int, tuple[float, float]] = field(default_factory=dict)  # second -> (∫c dt, covered s)
    last_end: float = -math.inf
    interval_s: float = 0.0


class ConcurrencyWindow:
    """One revision's reported concurrency, in 1-second buckets per gateway.

    A sample ``(at, concurrency, interval_s)`` from a gateway covers ``[at - interval_s, at]``; its
    time-weighted share goes into each bucket it overlaps, so a bucket's value is that gateway's
    average over it. Averaging over a window adds up the gateways (each gateway counts its own
    requests). Time before the first sample ever recorded is not averaged over (a new revision is
    not diluted by the time before it existed); after it, a bucket a gateway did not cover counts 0.
    The last moments after a gateway's latest sample are left out while its next report may still
    come (up to 2 of its intervals), then count 0 too: a gateway that stops reporting a revision
    (idle, or gone) stops counting.
    """

    def __init__(self, horizon_s: float) -> None:
        """``horizon_s``: the longest window asked for; older buckets are pruned."""
        self.horizon_s = horizon_s
        self.first: float | None = None
        self._series: dict[str, _GatewaySeries] = {}

    def record(self, gateway: str, *, at: float, concurrency: float, interval_s: float) -> None:
        start = at - interval_s
        self.first = start if self.first is None else min(self.first, start)
        series = self._series.setdefault(gateway, _GatewaySeries())
        series.last_end = max(series.last_end, at)
        series.interval_s = interval_s
        for second in range(math.floor(start), math.ceil(at)):
            overlap = min(at, second + 1) - max(start, second)
            if overlap > 0:
                total, covered = series.buckets.get(second, (0.0, 0.0))
                series.buckets[second] = (total + concurrency * overlap, covered + overlap)
        self.prune(at)

    def prune(self, now: float) -> None:
        """Forget buckets (and gateways) older than the horizon."""
        oldest = math.floor(now - self.horizon_s) - 1
        for name, series in list(self._series.items()):
            series.buckets = {s: v for s, v in series.buckets.items() if s >= oldest}
            if not series.buckets and series.last_end < now - self.horizon_s:
                del self._series[name]

    def average(self, now: float, window_s: float) -> float:
        """The concurrency averaged over ``(now - window_s, now]``, summed over gateways."""
        if self.first is None:
            return 0.0
        start = max(now - window_s, self.first)
        total = 0.0
        for series in list(self._series.values()):  # a snapshot: reports may arrive meanwhile
            end = now
            if now - series.last_end <= 2 * series.interval_s:
                end = min(now, series.last_end)  # its next report will cover the rest
            if end <= start:
                continue
            integral = 0.0
            for second in range(math.floor(start), math.ceil(end)):
                value = series.buckets.get(second)
                overlap = min(end, second + 1) - max(start, second)
                if value is not None and value[1] > 0 and overlap > 0:
                    integral += value[0] / value[1] * overlap
            total += integral / (end - start)
        return total


@dataclass
class ScaleState:
    """What :func:`decide` remembers about a revision between ticks."""

    last_active: float
    """Last time the stable average was nonzero or a request was held (start it at creation)."""
    panic_until: float | None = None
    """While panicking: when the panic ends unless re-triggered."""
    max_panic_desired: int = 0
    """The highest desired count during the current panic (panic never scales down)."""


@dataclass(frozen=True)
class Decision:
    desired: int
    panic: bool
    reason: str
    stable_concurrency: float = 0.0
    panic_concurrency: float = 0.0


def _want(concurrency: float, target: float) -> int:
    return max(0, math.ceil(concurrency / target - _CEIL_SLACK))


def decide(
    spec: ScaleSpec,
    window: ConcurrencyWindow,
    state: ScaleState,
    *,
    now: float,
    ready: int,
    current: int,
    held: int,
    cold_start_s: float | None,
    active: bool = True,
) -> Decision:
    """One tick for one revision; updates ``state``.

    ``ready``: its ready replicas; ``current``: its desired count so far; ``held``: requests the
    gateways hold for it now; ``cold_start_s``: a replica's last bind-to-ready time, if known;
    ``active``: it gets traffic (``min_replicas`` applies only then). The grace keeps a running
    last replica; a revision already at 0 with nothing held stays at 0.
    """
    target = spec.target_concurrency
    stable_s = spec.stable_window.total_seconds()
    panic_s = spec.panic_window.total_seconds()
    stable_avg = window.average(now, stable_s)
    panic_avg = window.average(now, panic_s)
    stable_want, panic_want = _want(stable_avg, target), _want(panic_avg, target)
    if stable_avg > IDLE_EPSILON or held > 0:
        state.last_active = now

    ratio = panic_avg / target / max(ready, 1)
    if ratio >= spec.panic_threshold:
        state.panic_until = now + stable_s
    elif state.panic_until is not None and now >= state.panic_until:
        state.panic_until, state.max_panic_desired = None, 0
    panic = state.panic_until is not None

    if panic:
        desired = max(stable_want, panic_want, current, state.max_panic_desired)
        state.max_panic_desired = desired
        reason = (
            f"panic: {panic_s:g}s average concurrency {panic_avg:.1f} / target {target:g} "
            f"= {ratio:.1f}x {max(ready, 1)} ready (threshold {spec.panic_threshold:g}x), "
            f"no scale-down -> {desired}"
        )
    else:
        desired = stable_want
        reason = f"stable {stable_s:g}s average concurrency {stable_avg:.1f} / target {target:g} -> {desired}"
    if held > 0 and desired < 1:
        desired = 1
        reason += f"; {held} request(s) held -> 1"

    floor = spec.min_replicas if active else 0
    if desired == 0 and floor == 0 and current > 0:
        grace = spec.scale_to_zero_grace.total_seconds()
        if cold_start_s is not None:
            grace = max(grace, 1.5 * cold_start_s)
        idle = now - state.last_active
        if idle < grace:
            desired = 1
            reason += f"; idle {idle:.0f}s < grace {grace:.0f}s, keep 1"
        else:
            reason += f"; idle {idle:.0f}s >= grace {grace:.0f}s, scale to zero"
    if desired < floor:
        desired = floor
        reason += f"; min_replicas {floor}"
    if desired > spec.max_replicas:
        desired = spec.max_replicas
        reason += f"; max_replicas {spec.max_replicas}"
    if not active and spec.min_replicas > 0:
        reason += f" (no traffic: min_replicas {spec.min_replicas} does not apply)"
    return Decision(desired, panic, reason, stable_avg, panic_avg)
