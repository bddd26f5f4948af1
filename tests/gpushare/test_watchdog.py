"""The memory watchdog's decisions and the compute duty cycle, on a fake clock (no processes)."""

from __future__ import annotations

import pytest

from tessera.gpushare.throttle import ComputeSample, DutyCycle, ShareMeter
from tessera.gpushare.watchdog import Act, MemoryWatchdog

LIMIT = 4096


def test_kill_policy_warns_terms_then_kills_after_the_grace_period() -> None:
    dog = MemoryWatchdog(grace_seconds=5)
    assert dog.observe("s", 4000, LIMIT, "kill", now=0.0) == []
    assert dog.observe("s", None, LIMIT, "kill", now=0.1) == []  # unknown is never over
    assert dog.observe("s", 4097, LIMIT, "kill", now=0.2) == [Act.EXCEEDED, Act.TERM]
    assert dog.state("s") == "stopping"
    assert dog.observe("s", 9000, LIMIT, "kill", now=3.0) == []  # one event, one SIGTERM per episode
    assert dog.observe("s", 100, LIMIT, "kill", now=5.1) == []  # freed memory does not save the task
    assert dog.observe("s", 100, LIMIT, "kill", now=5.2) == [Act.KILL]
    assert dog.observe("s", 100, LIMIT, "kill", now=5.3) == [Act.KILL]  # while anything is left
    assert dog.state("s") == "killed" and dog.peak("s") == 9000
    dog.forget("s")
    assert dog.state("s") is None and dog.observe("s", 10, LIMIT, "kill", now=6.0) == []


def test_report_policy_reports_each_episode_and_never_signals() -> None:
    dog = MemoryWatchdog(grace_seconds=0)
    assert dog.observe("s", 5000, LIMIT, "report", now=0.0) == [Act.EXCEEDED]
    assert dog.state("s") == "over-memory"
    assert dog.observe("s", 6000, LIMIT, "report", now=10.0) == []
    assert dog.observe("s", 1000, LIMIT, "report", now=11.0) == []  # back under: the episode ends
    assert dog.state("s") is None
    assert dog.observe("s", 5000, LIMIT, "report", now=12.0) == [Act.EXCEEDED]  # a new one


def test_slices_are_judged_separately() -> None:
    dog = MemoryWatchdog()
    assert dog.observe("greedy", 8192, LIMIT, "kill", now=0) == [Act.EXCEEDED, Act.TERM]
    assert dog.observe("neighbour", 4096, LIMIT, "kill", now=0) == []
    assert dog.state("neighbour") is None


def test_share_meter_keeps_a_sliding_window() -> None:
    meter = ShareMeter(window_seconds=1.0)
    assert meter.share_pct is None and meter.throttled_pct == 0
    for _ in range(10):
        meter.add(0.1, 1.0)
    assert meter.share_pct == 100
    for _ in range(10):
        meter.add(0.1, 0.25, stopped=0.05)
    assert meter.share_pct == pytest.approx(25, abs=0.01) and meter.throttled_pct == pytest.approx(
        50, abs=0.01
    )


class ToyGpu:
    """Slices that always want the GPU; running ones split each interval evenly, stopped ones get none."""

    def __init__(
        self, limits: dict[str, float], throttle: set[str], strict: frozenset[str] = frozenset()
    ) -> None:
        self.limits, self.throttle, self.strict = limits, throttle, strict
        self.duty = DutyCycle()
        self.stopped: dict[str, bool] = dict.fromkeys(limits, False)
        self.busy: dict[str, float] = dict.fromkeys(limits, 0.0)

    def run(self, seconds: float, dt: float = 0.1) -> dict[str, float]:
        total = dict.fromkeys(self.limits, 0.0)
        now = 0.0
        for _ in range(round(seconds / dt)):
            running = [s for s in self.limits if not self.stopped[s]]
            share = {s: (1.0 / len(running) if s in running else 0.0) for s in self.limits}
            for s in self.limits:
                total[s] += share[s] * dt
            samples = [
                ComputeSample(s, self.limits[s], share[s], s in self.throttle, s in self.strict)
                for s in self.limits
            ]
            now += dt
            self.stopped = self.duty.step(samples, dt, now)
        return {s: 100 * t / seconds for s, t in total.items()}


@pytest.mark.parametrize(("low", "high"), [(10, 90), (30, 70), (50, 50)])
def test_duty_cycle_holds_a_throttled_slice_to_its_share(low: int, high: int) -> None:
    shares = ToyGpu({"a": low / 100, "b": high / 100}, throttle={"a", "b"}).run(10)
    assert shares["a"] == pytest.approx(low, abs=3) and shares["b"] == pytest.approx(high, abs=3), shares


def test_untouchable_slices_and_a_slice_alone_run_free() -> None:
    # "a" may not be throttled (a gang member, or its queue only measures): it keeps its half
    shares = ToyGpu({"a": 0.1, "b": 0.9}, throttle={"b"}).run(10)
    assert shares["a"] == pytest.approx(50, abs=1)
    # alone on its GPU, a throttle-policy slice takes all of it; a strict one gets its share only
    assert ToyGpu({"a": 0.2}, throttle={"a"}).run(10)["a"] == pytest.approx(100)
    assert ToyGpu({"a": 0.2}, throttle={"a"}, strict=frozenset({"a"})).run(10)["a"] == pytest.approx(
        20, abs=3
    )


def test_debt_run_up_alone_is_forgiven_when_a_neighbour_arrives() -> None:
    duty = DutyCycle()
    for i in range(100):  # 10 s alone at full speed on a 10 % slice: no neighbour to pay back
        assert duty.step([ComputeSample("a", 0.1, 1.0, throttle=True)], 0.1, now=i * 0.1) == {"a": False}
    both = [ComputeSample("a", 0.1, 0.5, throttle=True), ComputeSample("b", 0.9, 0.5, throttle=True)]
    decisions = duty.step(both, 0.1, now=10.1)
    assert decisions == {"a": True, "b": False}
    stopped_for = 0
    while duty.step([ComputeSample("a", 0.1, 0.0, True), ComputeSample("b", 0.9, 1.0, True)], 0.1, 10.2)["a"]:
        stopped_for += 1
    assert stopped_for <= 5  # it owes for one contended interval, not for its ten seconds alone
