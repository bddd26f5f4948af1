import random
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta

import pytest

from tessera.scheduler.backfill import RESERVED
from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.firstfit import FirstFit
from tessera.scheduler.model import (
    UNSCHEDULABLE,
    Decisions,
    Eviction,
    NodeState,
    PendingJob,
    QueueState,
    RunningJob,
    Snapshot,
)
from tessera.scheduler.preempt import PREEMPTED, PREEMPTING, RECLAIMED
from tests.scheduler.builders import (
    NOW,
    JobBuilder,
    apply_binds,
    apply_decisions,
    job_id,
    make_job,
    make_node,
    make_queue,
    snapshot,
    start,
    to_running,
)
from tests.scheduler.test_cycle import _random_job, check


def run(
    nodes: Iterable[NodeState],
    jobs: Iterable[PendingJob],
    running: Iterable[RunningJob] = (),
    queues: Iterable[QueueState] = (),
) -> Decisions:
    return TesseraScheduler().cycle(snapshot(nodes, jobs, running, queues))


def evicted(decisions: Decisions, running: Iterable[RunningJob]) -> list[tuple[str, str]]:
    """(victim name, reason) per eviction, in order."""
    names = {r.job_id: r.name for r in running}
    return [(names[e.job_id], e.reason) for e in decisions.evictions]


def low(name: str, gpus: float = 1, minutes: float = 10, priority: int = 0) -> JobBuilder:
    """A preemptible low-priority running job."""
    return make_job(name).gpus(gpus).priority(priority).preemptible().running(started_minutes_ago=minutes)


def test_priority_preemption_evicts_a_lower_priority_job_and_waits_for_it() -> None:
    nodes, running = start([make_node("n1").gpus(1)], [low("lo")])
    decisions = run(nodes, [make_job("hi").gpus(1).priority(10).build()], running)
    assert decisions.binds == ()  # the victim must stop first
    assert decisions.evictions == (
        Eviction(job_id("lo"), job_id("hi"), PREEMPTED, "preempted by job 'hi' (priority 10 over 0)"),
    )
    reason = decisions.pending[job_id("hi")]
    assert (reason.code, reason.message) == (
        PREEMPTING,
        "evicting 1 running job to make room: 'lo' (Preempted); placed once they stop",
    )


@pytest.mark.parametrize(
    ("gpus", "victims", "expected"),
    [
        # Fewest GPU-seconds lost: 1 GPU x 5 min beats 1 GPU x 30 min and 2 GPUs x 10 min.
        (4, [low("a", 2, 10), low("b", 1, 30), low("c", 1, 5)], ["c"]),
        # Equal GPU-seconds (2 x 10 = 1 x 20): the lower priority goes.
        (3, [low("a", 2, 10, priority=5), low("b", 1, 20, priority=1)], ["b"]),
        # Equal cost and priority: the newest goes.
        (3, [low("old", 1, 20), low("young", 2, 10)], ["young"]),
        # A CPU-only job loses no GPU-seconds, so it is tried first, but frees no GPU: dropped again.
        (1, [make_job("cpu").cpu(60).priority(0).preemptible().running(), low("g", 1, 60)], ["g"]),
    ],
    ids=["gpu-seconds", "then-priority", "then-newest", "useless-victim-dropped"],
)
def test_priority_preemption_takes_the_cheapest_victim(
    gpus: int, victims: list[JobBuilder], expected: list[str]
) -> None:
    nodes, running = start([make_node("n1").gpus(gpus).cpu(64)], victims)
    decisions = run(nodes, [make_job("hi").gpus(1).priority(10).build()], running)
    assert [name for name, _ in evicted(decisions, running)] == expected


def test_victims_that_turn_out_unneeded_are_dropped_again() -> None:
    # Cheapest first would take x, then y, then z; only y and z (on n2) make room for 2 GPUs on one node.
    nodes, running = start(
        [make_node("n1").gpus(2), make_node("n2").gpus(2)],
        [
            low("x", 1, 1).running(on="n1", started_minutes_ago=1),
            make_job("w").gpus(1).running(on="n1"),
            low("y").running(on="n2", started_minutes_ago=2),
            low("z").running(on="n2", started_minutes_ago=3),
        ],
    )
    decisions = run(nodes, [make_job("hi").gpus(2).priority(10).build()], running)
    assert evicted(decisions, running) == [("y", PREEMPTED), ("z", PREEMPTED)]


@pytest.mark.parametrize(
    "victim",
    [
        make_job("v").gpus(1).priority(0),  # not preemptible
        make_job("v").gpus(1).priority(10).preemptible(),  # not lower
        make_job("v").gpus(1).priority(0).preemptible().queue("other"),  # another queue: only reclaim crosses
    ],
    ids=["not-preemptible", "equal-priority", "other-queue"],
)
def test_who_is_never_preempted_for_priority(victim: JobBuilder) -> None:
    nodes, running = start([make_node("n1").gpus(1)], [victim.running()])
    decisions = run(nodes, [make_job("hi").gpus(1).priority(10).build()], running)
    assert decisions.evictions == ()
    # it waits for the job to end, with the room reserved (backfill.py), never by evicting it
    assert decisions.pending[job_id("hi")].code == RESERVED


def test_no_eviction_unless_it_leads_to_a_placement() -> None:
    # Evicting both preemptible jobs frees 2 GPUs; the job needs 3 on one node.
    nodes, running = start(
        [make_node("n1").gpus(4)], [low("a"), low("b"), make_job("keep").gpus(2).priority(0).running()]
    )
    decisions = run(nodes, [make_job("hi").gpus(3).priority(10).build()], running)
    assert decisions.evictions == () and decisions.pending[job_id("hi")].code == RESERVED


def test_freed_room_is_held_for_the_preemptor_for_the_rest_of_the_cycle() -> None:
    # hi evicts v (2 GPUs) for 1 GPU. mid fits v's other GPU, but v has not stopped yet: mid waits,
    # and a job evicted once this cycle is not evicted again for mid.
    nodes, running = start([make_node("n1").gpus(2)], [low("v", 2)])
    jobs = [
        make_job("hi").gpus(1).priority(10).build(),
        make_job("mid").gpus(1).priority(5).submitted(1).build(),
    ]
    decisions = run(nodes, jobs, running)
    assert evicted(decisions, running) == [("v", PREEMPTED)]
    assert decisions.binds == () and decisions.pending[job_id("mid")].code == UNSCHEDULABLE


def test_reclaim_takes_back_borrowed_capacity_whole_gangs_only() -> None:
    # b is owed 1 GPU and borrows 3 (a 2-task gang across nodes, and a single job). a is owed 2,
    # holds none: it reclaims 2 GPUs, a whole gang, regardless of priority and preemptible.
    queues = [make_queue("a").guaranteed(gpu=2).build(), make_queue("b").guaranteed(gpu=1).build()]
    nodes, running = start(
        [make_node("n1").gpus(2), make_node("n2").gpus(2)],
        [
            make_job("solo").gpus(1).queue("b").priority(1000).running(on="n1", started_minutes_ago=60),
            make_job("gang").gpus(1).workers(2).queue("b").priority(1000).running(started_minutes_ago=5),
            make_job("keep").gpus(1).queue("b").priority(1000).running(started_minutes_ago=90),
        ],
    )
    assert {len({p.node for p in r.placements}) for r in running if r.name == "gang"} == {2}
    decisions = run(nodes, [make_job("owed").gpus(1).workers(2).queue("a").build()], running, queues)
    assert evicted(decisions, running) == [("gang", RECLAIMED)]
    assert decisions.evictions[0].message == (
        "reclaimed for job 'owed' of queue 'a', which is owed its guaranteed quota; "
        "queue 'b' is above its own"
    )
    assert decisions.pending[job_id("owed")].code == PREEMPTING
    # A single 2-GPU task needs both GPUs of one node: the gang and solo (both on n1) go.
    decisions = run(nodes, [make_job("owed").gpus(2).queue("a").build()], running, queues)
    assert evicted(decisions, running) == [("gang", RECLAIMED), ("solo", RECLAIMED)]


def test_a_queue_gives_up_nothing_below_its_guarantee() -> None:
    # b is owed 2 and holds 4: at most 2 GPUs can be reclaimed. a needs 3, so nothing is evicted.
    queues = [make_queue("a").guaranteed(gpu=3).build(), make_queue("b").guaranteed(gpu=2).build()]
    nodes, running = start(
        [make_node("n1").gpus(4)], [make_job(f"b{i}").gpus(1).queue("b").running() for i in range(4)]
    )
    decisions = run(nodes, [make_job("owed").gpus(3).queue("a").build()], running, queues)
    assert decisions.evictions == ()
    # Needing 2, it reclaims exactly 2.
    decisions = run(nodes, [make_job("owed").gpus(2).queue("a").build()], running, queues)
    assert [reason for _, reason in evicted(decisions, running)] == [RECLAIMED, RECLAIMED]


def test_a_borrowing_job_does_not_reclaim() -> None:
    # a is owed 1 GPU; a 2-GPU job would borrow, so it may not take b's borrowed capacity.
    queues = [make_queue("a").guaranteed(gpu=1).build(), make_queue("b").build()]
    nodes, running = start([make_node("n1").gpus(2)], [make_job("b0").gpus(2).queue("b").running()])
    decisions = run(nodes, [make_job("big").gpus(2).queue("a").build()], running, queues)
    assert decisions.evictions == ()


def test_a_borrowing_job_does_not_preempt_what_its_queue_is_owed() -> None:
    # a is owed 2 GPUs. lo (1 GPU) is within it; hi (2 GPUs) would borrow. If hi evicted lo, lo
    # would be owed its GPU next cycle and, being within guarantee, go first and take it back.
    queues = [make_queue("a").guaranteed(gpu=2).build()]
    nodes, running = start([make_node("n1").gpus(2)], [low("lo").queue("a"), make_job("x").gpus(1).running()])
    decisions = run(nodes, [make_job("hi").gpus(2).priority(10).queue("a").build()], running, queues)
    assert decisions.evictions == ()


def test_room_held_for_another_preemptor_does_not_make_a_victim_a_borrower() -> None:
    # org is owed 1 GPU. In q2, hi2 evicts lo0 and holds n1's GPU. In q1, hi1 (2 GPUs, borrowing)
    # could only evict lo1 and lo2 if they would borrow when re-placed. Counting hi2's held GPU they
    # would, but next cycle hi2 is pending again: lo1 is within org's guarantee, goes first and takes
    # n2 back, and hi1 evicts it a second time. Judged without held room, hi1 waits one cycle instead.
    queues = [
        make_queue("org").guaranteed(gpu=1).build(),
        make_queue("q1").parent("org").build(),
        make_queue("q2").parent("org").guaranteed(gpu=1).build(),
    ]
    nodes, running = start(
        [make_node("n1").gpus(1), make_node("n2").gpus(2)],
        [low("lo0").queue("q2").running(on="n1"), low("lo1", 0.75).queue("q1"), low("lo2", 0.75).queue("q1")],
    )
    jobs = [
        make_job("hi2").gpus(1).priority(100).queue("q2"),
        make_job("hi1").gpus(2).priority(100).queue("q1"),
    ]
    snap = snapshot(nodes, [j.build() for j in jobs], running, queues)
    specs = {j.job_id: j for j in snap.pending} | {
        r.job_id: low(r.name, 1 if r.name == "lo0" else 0.75).queue(r.queue).build() for r in running
    }
    names = {j: s.name for j, s in specs.items()}
    history = []
    for _ in range(5):
        decisions = TesseraScheduler().cycle(snap)
        history.append([(names[e.job_id], names[e.for_job]) for e in decisions.evictions])
        snap = apply_decisions(snap, decisions, specs)
    assert history[:3] == [[("lo0", "hi2")], [("lo1", "hi1"), ("lo2", "hi1")], []]
    assert {r.name for r in snap.running} == {"hi1", "hi2"}


def _contended_case(seed: int) -> tuple[Snapshot, dict[uuid.UUID, PendingJob]]:
    """A small, full cluster with nested queues and many preemptible jobs: evictions are likely."""
    rnd = random.Random(seed)
    nested = rnd.random() < 0.5
    queues = [make_queue("org").guaranteed(gpu=rnd.choice([1, 2, 3])).build()] if nested else []
    for name in "abc":
        qb = make_queue(name).guaranteed(gpu=rnd.choice([0, 1, 2])).weight(rnd.choice([1, 2, 3]))
        if rnd.random() < 0.3:
            qb.borrow(gpu=rnd.choice([1, 2, 4]))
        if nested and name != "c":
            qb.parent("org")
        queues.append(qb.build())
    pool = ["a", "b", "c", "default"] if rnd.random() < 0.3 else ["a", "b", "c"]
    nodes = [
        make_node(f"n{i}").cpu(16).memory("64Gi").gpus(rnd.randint(1, 3)).build()
        for i in range(rnd.randint(1, 2))
    ]
    specs: dict[uuid.UUID, PendingJob] = {}
    running = []
    for i in range(rnd.randint(2, 8)):
        job = _random_job(rnd, f"r{seed}-{i}", pool).build()
        first = FirstFit().cycle(snapshot(nodes, [job]))
        if first.binds:
            nodes = apply_binds(nodes, [job], first.binds)
            specs[job.job_id] = job
            running.append(to_running(job, first.binds[0], NOW - timedelta(minutes=rnd.randint(0, 120))))
    pending = [_random_job(rnd, f"p{seed}-{i}", pool).build() for i in range(rnd.randint(2, 10))]
    specs.update({j.job_id: j for j in pending})
    snap = Snapshot(
        nodes=tuple(nodes), pending=tuple(pending), now=NOW, running=tuple(running), queues=tuple(queues)
    )
    return snap, specs


def test_replayed_cycles_converge_without_ping_pong() -> None:
    """Apply each cycle's decisions (binds run, victims stop and wait again) until nothing changes."""
    evictions = 0
    for seed in range(300):
        snap, specs = _contended_case(seed)
        pairs: list[tuple[uuid.UUID, uuid.UUID]] = []
        for _ in range(50):
            decisions = TesseraScheduler().cycle(snap)
            check(snap, decisions)
            if not decisions.binds and not decisions.evictions:
                break
            pairs += [(e.job_id, e.for_job) for e in decisions.evictions]
            snap = apply_decisions(snap, decisions, specs)
        else:
            pytest.fail(f"seed {seed}: no stable state after 50 cycles")
        # No ping-pong: no preemptor evicts the same job twice, and no victim evicts its preemptor back.
        assert max(Counter(pairs).values(), default=0) <= 1, seed
        assert not {(b, a) for a, b in pairs} & set(pairs), seed
        evictions += len(pairs)
    assert evictions > 50  # the generator must make preemption happen


def test_a_job_that_evicted_others_claims_the_freed_room_first() -> None:
    import dataclasses

    # one free GPU; two idle queues of equal weight: the fair order would take 'a' first (ties go
    # by name), but 'b's job evicted for this room last cycle, so it is placed first
    nodes = [make_node("n1").gpus(1).build()]
    queues = (make_queue("a").build(), make_queue("b").build())
    claimant = dataclasses.replace(
        make_job("claimant").gpus(1).queue("b").submitted(5).build(), preempting=True
    )
    other = make_job("other").gpus(1).queue("a").submitted(1).build()
    decisions = TesseraScheduler().cycle(snapshot(nodes, [other, claimant], queues=queues))
    assert [b.job_id for b in decisions.binds] == [claimant.job_id]
    plain = dataclasses.replace(claimant, preempting=False)
    decisions = TesseraScheduler().cycle(snapshot(nodes, [other, plain], queues=queues))
    assert [b.job_id for b in decisions.binds] == [other.job_id]  # without the claim, fair order rules


def test_a_service_replica_is_never_evicted_for_training_unless_its_queue_allows() -> None:
    # The same reclaim and priority preemption as above, but the victims are service replicas
    # (protected): nothing is evicted, and the job waits for room instead.
    import dataclasses

    queues = [make_queue("a").guaranteed(gpu=2).build(), make_queue("b").guaranteed(gpu=1).build()]
    nodes, running = start(
        [make_node("n1").gpus(2)],
        [make_job(f"svc{i}").gpus(1).queue("b").preemptible().running() for i in range(2)],
    )
    protected = [dataclasses.replace(r, protected=True) for r in running]
    decisions = run(nodes, [make_job("owed").gpus(1).queue("a").build()], protected, queues)
    assert decisions.evictions == ()
    # the same jobs unprotected (their queue lets services be preempted) are reclaimed
    decisions = run(nodes, [make_job("owed").gpus(1).queue("a").build()], running, queues)
    assert [reason for _, reason in evicted(decisions, running)] == [RECLAIMED]
    nodes, running = start([make_node("n1").gpus(1)], [low("svc")])
    protected = [dataclasses.replace(r, protected=True) for r in running]
    decisions = run(nodes, [make_job("hi").gpus(1).priority(10).build()], protected)
    assert decisions.evictions == ()
    assert evicted(run(nodes, [make_job("hi").gpus(1).priority(10).build()], running), running) == [
        ("svc", PREEMPTED)
    ]
