"""The autoscaler's decision rules (Knative KPA-like), on pure numbers: no clock, no database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tessera.api.serving import ServiceSpec
from tessera.platform.controllers.kpa import ConcurrencyWindow, Decision, ScaleState, decide


def spec(**fields: Any) -> ServiceSpec:
    base: dict[str, Any] = {"name": "m", "command": ["serve"], "min_replicas": 0, "max_replicas": 20}
    return ServiceSpec(**(base | fields))


def load(
    window: ConcurrencyWindow,
    concurrency: float,
    *,
    start: float,
    end: float,
    gateway: str = "gw",
    interval: float = 2.0,
) -> None:
    """Reports every ``interval`` seconds covering ``[start, end]`` at a steady concurrency."""
    at = start + interval
    while at <= end + 1e-9:
        window.record(gateway, at=at, concurrency=concurrency, interval_s=interval)
        at += interval


def tick(
    s: ServiceSpec,
    window: ConcurrencyWindow,
    state: ScaleState,
    now: float,
    *,
    ready: int,
    current: int,
    held: int = 0,
    cold_start_s: float | None = None,
    active: bool = True,
) -> Decision:
    return decide(
        s,
        window,
        state,
        now=now,
        ready=ready,
        current=current,
        held=held,
        cold_start_s=cold_start_s,
        active=active,
    )


@pytest.mark.parametrize(
    ("concurrency", "target", "expected"),
    [(13.2, 10, 2), (20.0, 10, 2), (20.5, 10, 3), (0.4, 10, 1), (7.0, 1, 7), (45.0, 15, 3)],
)
def test_steady_load_wants_ceil_of_average_over_target(concurrency: float, target: float, expected: int):
    window = ConcurrencyWindow(60)
    load(window, concurrency, start=0, end=120)
    s = spec(target_concurrency=target)
    d = tick(s, window, ScaleState(last_active=0), 120, ready=expected, current=1)
    assert (d.desired, d.panic) == (expected, False)
    assert d.stable_concurrency == pytest.approx(concurrency)
    assert "stable 60s average concurrency" in d.reason and f"-> {expected}" in d.reason


def test_burst_panics_scales_fast_never_down_and_calms_after_a_stable_window():
    s = spec(target_concurrency=10)
    window, state = ConcurrencyWindow(60), ScaleState(last_active=0)
    load(window, 5, start=0, end=120)
    assert tick(s, window, state, 120, ready=1, current=1).desired == 1
    load(window, 80, start=120, end=126)  # burst: 6s at 80 in flight, 1 replica ready
    d = tick(s, window, state, 126, ready=1, current=1)
    stable_only = -(-d.stable_concurrency // 10)
    assert d.panic and d.desired == 8 > stable_only  # the panic window's 80 / 10, not the stable 60s average
    assert state.panic_until == 126 + 60

    # the burst stops: no scale-down while panicking, even as the panic window empties
    load(window, 0, start=126, end=170)
    for now in range(128, 171, 2):
        d = tick(s, window, state, now, ready=8, current=8)
        assert d.panic and d.desired == 8, now
    # a stable window after the last trigger (126) the panic ends; the stable average decides again
    load(window, 0, start=170, end=186)
    d = tick(s, window, state, 186, ready=8, current=8)
    assert not d.panic and state.panic_until is None and state.max_panic_desired == 0
    assert d.desired == 1  # the burst is still within the 60s stable window


def test_panic_retriggers_extend_it_and_it_only_grows():
    s = spec(target_concurrency=10)
    window, state = ConcurrencyWindow(60), ScaleState(last_active=0)
    load(window, 30, start=0, end=6)
    assert tick(s, window, state, 6, ready=1, current=1).desired == 3
    load(window, 90, start=6, end=12)  # 90 / 10 / 3 ready = 3x >= 2x: triggers again, higher
    d = tick(s, window, state, 12, ready=3, current=3)
    assert d.panic and d.desired == 9 and state.panic_until == 72
    load(window, 10, start=12, end=18)
    assert tick(s, window, state, 18, ready=9, current=9).desired == 9


@pytest.mark.parametrize(
    ("panic_concurrency", "ready", "threshold", "panics"),
    [(20, 1, 2.0, True), (19, 1, 2.0, False), (20, 0, 2.0, True), (60, 5, 2.0, False), (100, 5, 2.0, True)],
)
def test_panic_threshold_is_panic_window_want_over_ready(
    panic_concurrency: float, ready: int, threshold: float, panics: bool
):
    window = ConcurrencyWindow(60)
    load(window, panic_concurrency, start=0, end=6)
    s = spec(panic_threshold=threshold)
    d = tick(s, window, ScaleState(last_active=0), 6, ready=ready, current=ready)
    assert d.panic is panics


def test_a_held_request_scales_from_zero_at_once():
    window = ConcurrencyWindow(60)  # no sample yet
    d = tick(spec(), window, ScaleState(last_active=0), 1000, ready=0, current=0, held=1)
    assert d.desired == 1 and "held" in d.reason


def test_nothing_running_and_nothing_held_stays_at_zero():
    d = tick(spec(), ConcurrencyWindow(60), ScaleState(last_active=0), 10, ready=0, current=0)
    assert d.desired == 0


def _first_zero(s: ServiceSpec, *, cold_start_s: float | None = None, active: bool = True) -> float:
    """Traffic (1 in flight) until t=100, then idle: the first tick (every 1s) that wants 0."""
    window, state = ConcurrencyWindow(60), ScaleState(last_active=0)
    load(window, 1, start=0, end=100)
    for now in range(100, 1000):
        d = tick(s, window, state, now, ready=1, current=1, cold_start_s=cold_start_s, active=active)
        if d.desired == 0:
            assert "scale to zero" in d.reason
            return now
        assert d.desired == 1, now
    raise AssertionError("never scaled to zero")


# the stable average is last nonzero at t=159 (the 60s window still reaches back before t=100)
@pytest.mark.parametrize(
    ("grace_s", "cold_start_s", "zero_at"),
    [
        (30, None, 159 + 30),
        (0, None, 160),  # no grace: as soon as the stable average is 0
        (30, 10.0, 159 + 30),  # 1.5 x 10s is less than the grace
        (30, 40.0, 159 + 60),  # the grace stays longer than a replica's start: 1.5 x 40s
    ],
)
def test_idle_scales_to_zero_only_after_the_grace(grace_s: float, cold_start_s: float | None, zero_at: float):
    s = spec(scale_to_zero_grace=timedelta(seconds=grace_s))
    assert _first_zero(s, cold_start_s=cold_start_s) == zero_at


def test_held_request_while_idle_keeps_a_replica():
    window, state = ConcurrencyWindow(60), ScaleState(last_active=0)
    d = tick(spec(), window, state, 500, ready=1, current=1, held=2)
    assert d.desired == 1 and state.last_active == 500


@pytest.mark.parametrize(
    ("min_r", "max_r", "concurrency", "expected"),
    [(2, 5, 0, 2), (2, 5, 35, 4), (2, 3, 100, 3), (1, 1, 500, 1), (0, 4, 0, 0)],
)
def test_min_and_max_clamp(min_r: int, max_r: int, concurrency: float, expected: int):
    s = spec(min_replicas=min_r, max_replicas=max_r, target_concurrency=10, scale_to_zero_grace=timedelta(0))
    window = ConcurrencyWindow(60)
    load(window, concurrency, start=0, end=120)
    d = tick(s, window, ScaleState(last_active=0), 120, ready=expected, current=max(expected, 1))
    assert d.desired == expected  # (at max_replicas a surge still panics; the clamp holds)


def test_an_inactive_revision_scales_to_zero_ignoring_min_after_grace():
    s = spec(min_replicas=2, max_replicas=5)
    assert _first_zero(s, active=False) == 189
    window, state = ConcurrencyWindow(60), ScaleState(last_active=0)
    load(window, 1, start=0, end=100)
    d = tick(s, window, state, 120, ready=2, current=2, active=False)
    assert d.desired == 1 and "min_replicas 2 does not apply" in d.reason
    assert tick(s, window, state, 120, ready=2, current=2).desired == 2  # active again: min applies


def test_two_gateways_concurrency_adds_up():
    window = ConcurrencyWindow(60)
    load(window, 6, start=0, end=60, gateway="a")
    load(window, 7.5, start=0, end=60, gateway="b", interval=3)
    assert window.average(60, 60) == pytest.approx(13.5)
    d = tick(spec(target_concurrency=10), window, ScaleState(last_active=0), 60, ready=2, current=2)
    assert d.desired == 2


def test_a_gateway_that_joins_later_counts_zero_before_its_first_report():
    window = ConcurrencyWindow(60)
    load(window, 4, start=0, end=60, gateway="a")
    load(window, 6, start=30, end=60, gateway="b")
    assert window.average(60, 60) == pytest.approx(4 + 3)


def test_the_window_averages_only_since_the_first_sample():
    window = ConcurrencyWindow(60)
    assert window.average(100, 60) == 0
    window.record("gw", at=100, concurrency=20, interval_s=2)
    assert window.average(100, 60) == pytest.approx(20)  # not diluted by the 58s before it existed
    assert window.average(100, 6) == pytest.approx(20)
    load(window, 0, start=100, end=104)
    assert window.average(104, 60) == pytest.approx(20 * 2 / 6)
    assert window.average(104, 2) == 0


def test_the_tail_not_yet_reported_is_left_out_then_counts_zero():
    window = ConcurrencyWindow(60)
    load(window, 10, start=0, end=60)
    assert window.average(63, 6) == pytest.approx(10)  # the next report (due at 62) may still come
    assert window.average(65, 6) == pytest.approx(10 * 1 / 6)  # 2 intervals late: silent means idle
    assert window.average(200, 60) == 0


def test_old_buckets_are_pruned():
    window = ConcurrencyWindow(60)
    load(window, 1, start=0, end=1000, gateway="a")
    load(window, 1, start=0, end=10, gateway="gone")
    window.prune(1000)
    series = window._series
    assert set(series) == {"a"}
    assert min(series["a"].buckets) >= 1000 - 62 and window.average(1000, 60) == pytest.approx(1)
