"""Step 5: reservations for the head of each queue, backfill around them, and the starvation bound."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from datetime import timedelta

import pytest

from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.model import (
    GANG_TOO_LARGE,
    UNSCHEDULABLE,
    Decisions,
    NodeState,
    PendingJob,
    RunningJob,
)
from tessera.scheduler.preempt import PREEMPTED, PREEMPTING
from tests.scheduler.builders import (
    NOW,
    JobBuilder,
    apply_decisions,
    finish_due,
    job_id,
    make_job,
    make_node,
    make_queue,
    snapshot,
    start,
)


def run(
    nodes: Iterable[NodeState], jobs: Iterable[PendingJob], running: Iterable[RunningJob] = ()
) -> Decisions:
    return TesseraScheduler().cycle(snapshot(nodes, jobs, running))


def big() -> JobBuilder:
    """A gang of two 4-GPU workers: it needs both nodes of :func:`busy` whole."""
    return make_job("big").gpus(4).workers(2).submitted(0)


def busy(b_runtime: float | None = 60) -> tuple[list[NodeState], list[RunningJob]]:
    """n1 full until a ends (in 20 min); n2 half used by b (ends in 50 min by default)."""
    b = make_job("b").gpus(2).running(on="n2")
    return start(
        [make_node("n1").gpus(4), make_node("n2").gpus(4)],
        [make_job("a").gpus(4).runtime(30).running(on="n1"), b.runtime(b_runtime) if b_runtime else b],
    )


@pytest.mark.parametrize(
    ("small", "backfills"),
    [
        (make_job("small").gpus(1).runtime(15), True),  # ends at +15 min, before b (+50): backfills
        (make_job("small").gpus(2).runtime(50), True),  # ends exactly when the gang can start
        (make_job("small").gpus(1).runtime(120), False),  # would still run when big needs n2
        (make_job("small").gpus(1), False),  # no expected runtime: never into a reservation
    ],
    ids=["short", "just-in-time", "too-long", "no-runtime"],
)
def test_only_jobs_that_end_in_time_backfill_into_a_reservation(small: JobBuilder, backfills: bool) -> None:
    nodes, running = busy()
    decisions = run(nodes, [big().build(), small.submitted(1).build()], running)
    reason = decisions.pending[job_id("big")]
    assert reason.code == RESERVED
    assert "'a', 'b'" in reason.message and "next in queue 'default'" in reason.message
    binds = {b.job_id: b for b in decisions.binds}
    if backfills:
        assert binds[job_id("small")].backfill_until == NOW + timedelta(minutes=50)
    else:
        assert job_id("small") not in binds
        waiting = decisions.pending[job_id("small")]
        assert waiting.code == UNSCHEDULABLE and "room held for 'big'" in waiting.message


def test_free_room_the_reservation_does_not_need_stays_usable() -> None:
    # n3's GPU is of a model big cannot use: anyone may take it, runtime or not.
    nodes, running = busy()
    nodes.append(make_node("n3").gpus(1, model="T4", memory_mib=15360).build())
    gang = big().models("A100-80GB").build()
    decisions = run(nodes, [gang, make_job("small").gpus(1).submitted(1).build()], running)
    assert decisions.pending[job_id("big")].code == RESERVED
    [bind] = decisions.binds
    assert bind.job_id == job_id("small") and bind.placements[0].node == "n3" and bind.backfill_until is None


def test_unknown_shadow_time_admits_no_backfill() -> None:
    nodes, running = busy(b_runtime=None)  # b declared no runtime: when big can start is unknown
    decisions = run(
        nodes, [big().build(), make_job("small").gpus(1).runtime(1).submitted(1).build()], running
    )
    reason = decisions.pending[job_id("big")]
    assert reason.code == RESERVED and "declared no expected runtime" in reason.message
    assert decisions.binds == ()


def test_one_reservation_per_queue_and_none_for_a_gang_too_large() -> None:
    nodes, running = busy()
    t4 = make_node("n3").gpus(4, model="T4", memory_mib=15360)
    nodes, more = start([*nodes, t4], [make_job("c").gpus(4).runtime(40).running(on="n3")])
    jobs = [
        make_job("huge")
        .gpus(4)
        .workers(3)
        .models("A100-80GB")
        .submitted(0)
        .build(),  # 12 A100s: more than the cluster has
        big().models("A100-80GB").submitted(1).build(),
        make_job("second").gpus(4).workers(2).models("A100-80GB").submitted(2).build(),
        make_job("other").gpus(4).models("T4").queue("q2").submitted(3).build(),
    ]
    decisions = run(nodes, jobs, [*running, *more])
    codes = {name: decisions.pending[job_id(name)].code for name in ("huge", "big", "second", "other")}
    assert codes == {"huge": GANG_TOO_LARGE, "big": RESERVED, "second": UNSCHEDULABLE, "other": RESERVED}


def test_reservations_do_not_share_future_room() -> None:
    # Both queues' gangs need n1 and n2 whole; q2 comes first (no usage) and reserves them, so the
    # other gang has no room left to reserve, now or when a and b end.
    nodes, running = busy()
    jobs = [big().build(), make_job("other").gpus(4).workers(2).queue("q2").submitted(3).build()]
    decisions = run(nodes, jobs, running)
    assert decisions.pending[job_id("other")].code == RESERVED
    assert decisions.pending[job_id("big")].code == UNSCHEDULABLE


def test_a_holder_goes_before_the_fair_order() -> None:
    # One GPU free. Queue a has less usage, so fair share takes its job first, unless b's job held
    # a reservation for this room last cycle.
    nodes = [make_node("n1").gpus(1).build()]
    queues = (make_queue("a").build(), make_queue("b").build())
    mine = make_job("mine").gpus(1).queue("b").submitted(5).build()
    other = make_job("other").gpus(1).queue("a").submitted(1).build()
    snap = snapshot(nodes, [other, dataclasses.replace(mine, reserved=True)], queues=queues)
    assert [b.job_id for b in TesseraScheduler().cycle(snap).binds] == [mine.job_id]
    snap = snapshot(nodes, [other, mine], queues=queues)
    assert [b.job_id for b in TesseraScheduler().cycle(snap).binds] == [other.job_id]


def test_a_backfill_past_its_time_is_preempted_for_the_holder_only() -> None:
    nodes, running = start(
        [make_node("n1").gpus(4), make_node("n2").gpus(4)],
        [make_job("b").gpus(2).runtime(5).running(on="n2")],
    )
    late = dataclasses.replace(running[0], backfill_until=NOW - timedelta(minutes=1))  # b overran
    holder = dataclasses.replace(big().build(), reserved=True)
    decisions = run(nodes, [holder], [late])
    [eviction] = decisions.evictions
    assert eviction.job_id == late.job_id and eviction.reason == PREEMPTED
    assert "backfilled into room held for job 'big'" in eviction.message
    assert decisions.pending[holder.job_id].code == PREEMPTING
    # the same job that never held a reservation evicts nobody: it reserves
    decisions = run(nodes, [big().build()], [late])
    assert decisions.evictions == () and decisions.pending[job_id("big")].code == RESERVED


def _replay(backfill: bool, minutes: int) -> tuple[int | None, int]:
    """Big waits behind a (20 min left) and b (50 min left) while a stream of small jobs arrives.

    Returns the minute big started (None if it never did) and how many small jobs ran meanwhile.
    """
    nodes, running = busy()
    specs: dict[uuid.UUID, PendingJob] = {}
    gang = big().build()
    specs[gang.job_id] = gang
    snap = snapshot(nodes, [gang], running)
    started, backfilled = None, 0
    for minute in range(minutes):
        arrivals = [
            make_job(f"s{minute}-{i}").gpus(1).submitted(minute + (i + 1) / 10).runtime(rt).build()
            for i, rt in enumerate((15, 90))  # one short job and one long one every minute
        ]
        specs.update({j.job_id: j for j in arrivals})
        snap = finish_due(dataclasses.replace(snap, pending=snap.pending + tuple(arrivals)))
        decisions = TesseraScheduler(backfill=backfill).cycle(snap)
        for bind in decisions.binds:
            if bind.job_id == gang.job_id:
                started = minute
            elif started is None:
                backfilled += 1
        snap = apply_decisions(snap, decisions, specs)
        if started is not None:
            break
    return started, backfilled


def test_starvation_bound_the_head_gang_starts_when_its_blockers_end() -> None:
    started, backfilled = _replay(backfill=True, minutes=120)
    # a ends at +20 min and b at +50: big starts by then, although small jobs keep arriving,
    # and short ones used the held room meanwhile
    assert started is not None and started <= 50
    assert backfilled > 0
    # without reservations the small jobs take every GPU as it frees up, and big starves
    starved, _ = _replay(backfill=False, minutes=120)
    assert starved is None
