"""Invariants as hypothesis properties over random clusters, queues and job streams.

Each example is a whole scenario (nodes, GPUs, a queue tree with quotas, running and pending
jobs) grown from a drawn seed; hypothesis searches the seeds and shrinks a failure to the
smallest one. A stream of cycles is replayed with every decision applied, checking after
each cycle: no GPU over-committed, no partial gang bound, no queue past its borrowing limit,
and the same snapshot always giving the same decisions.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.scheduler.cycle import TesseraScheduler
from tests.scheduler.builders import apply_decisions, finish_due
from tests.scheduler.test_cycle import check, random_case

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
PROFILE = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@PROFILE
@given(seed=SEEDS)
def test_one_cycle_keeps_the_invariants(seed: int) -> None:
    snap, _ = random_case(seed)
    check(snap, TesseraScheduler().cycle(snap))


@PROFILE
@given(seed=SEEDS, cycles=st.integers(min_value=2, max_value=8))
def test_a_stream_of_cycles_keeps_the_invariants(seed: int, cycles: int) -> None:
    snap, specs = random_case(seed)
    for _ in range(cycles):
        decisions = TesseraScheduler().cycle(snap)
        check(snap, decisions)
        assert TesseraScheduler().cycle(snap) == decisions  # same snapshot, same decisions
        snap = finish_due(apply_decisions(snap, decisions, specs))
