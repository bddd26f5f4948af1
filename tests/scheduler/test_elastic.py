"""Step 6: elastic jobs grow into free room, give extras back first, never below their gang."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.firstfit import FirstFit
from tessera.scheduler.model import Decisions, ElasticRun, NodeState, PendingJob, RunningJob
from tessera.scheduler.preempt import PREEMPTING
from tests.scheduler.builders import NOW, apply_binds, make_job, make_node, make_queue, snapshot, to_running


def elastic(
    name: str,
    nodes: list[NodeState],
    lo: int,
    hi: int,
    bound: int,
    *,
    priority: int = 100,
    minutes: float = 10,
    queue: str = "default",
    preemptible: bool = False,
) -> tuple[list[NodeState], RunningJob]:
    """An elastic job of lo..hi one-GPU workers running with ``bound`` of them (first fit)."""
    job = (
        make_job(name)
        .gpus(1)
        .workers(hi)
        .min_available(lo)
        .priority(priority)
        .queue(queue)
        .preemptible(preemptible)
        .build()
    )
    first = dataclasses.replace(job, tasks=job.tasks[:bound], min_available=None)
    decisions = FirstFit().cycle(snapshot(nodes, [first]))
    assert decisions.binds, decisions.pending
    bind = decisions.binds[0]
    nodes = apply_binds(nodes, [first], [bind])
    running = to_running(first, bind, NOW - timedelta(minutes=minutes))
    placed = bind.task_nodes()
    holding = [t for t in job.tasks if t.task_id in placed]
    extras = tuple(sorted(holding, key=lambda t: -t.index)[: len(holding) - lo])
    growable = tuple(t for t in job.tasks if t.task_id not in placed)
    return nodes, dataclasses.replace(running, elastic=ElasticRun(lo, hi, extras, growable), version=3)


def cycle(
    nodes: list[NodeState], pending: list[PendingJob], running: list[RunningJob], queues=()
) -> Decisions:
    return TesseraScheduler().cycle(snapshot(nodes, pending, running, queues))


def granted(decisions: Decisions) -> dict[str, int]:
    return {str(g.job_id): len(g.task_nodes()) for g in decisions.grants}


def test_grows_into_free_room_up_to_its_max() -> None:
    nodes, job = elastic("e", [make_node("n1").gpus(4).build()], lo=1, hi=3, bound=1)
    decisions = cycle(nodes, [], [job])
    assert len(decisions.grants) == 1
    grant = decisions.grants[0]
    assert grant.job_id == job.job_id and grant.version == 3
    assert len(grant.task_nodes()) == 2  # 1 running + 2 granted = max 3, though a 4th GPU is free
    assert job.elastic is not None
    assert {p.task_id for p in grant.placements} == {t.task_id for t in job.elastic.growable[:2]}


def test_a_full_job_or_a_full_cluster_grows_no_more() -> None:
    nodes, job = elastic("e", [make_node("n1").gpus(2).build()], lo=1, hi=4, bound=2)
    assert cycle(nodes, [], [job]).grants == ()


def test_grants_stay_within_the_queues_borrowing_limit() -> None:
    queue = make_queue("q").guaranteed(gpu=1).borrow(gpu=1).build()
    nodes, job = elastic("e", [make_node("n1").gpus(8).build()], lo=1, hi=6, bound=1, queue="q")
    decisions = cycle(nodes, [], [job], [queue])
    assert [len(g.task_nodes()) for g in decisions.grants] == [1]  # 1 + 1 = guarantee + borrowing


def test_pending_jobs_come_before_grants() -> None:
    nodes, job = elastic("e", [make_node("n1").gpus(4).build()], lo=1, hi=4, bound=1)
    waiting = make_job("w").gpus(1).workers(2).build()
    decisions = cycle(nodes, [waiting], [job])
    assert [b.job_id for b in decisions.binds] == [waiting.job_id]
    assert [len(g.task_nodes()) for g in decisions.grants] == [1]  # what the pending job left


def test_extras_are_taken_back_before_anyone_is_evicted() -> None:
    nodes, job = elastic("e", [make_node("n1").gpus(4).build()], lo=1, hi=4, bound=4, preemptible=True)
    # a lower-priority preemptible job would be an eviction candidate too: extras go first anyway
    urgent = make_job("u").gpus(1).workers(2).priority(1000).build()
    decisions = cycle(nodes, [urgent], [job])
    assert decisions.evictions == () and decisions.binds == ()
    assert len(decisions.shrinks) == 1
    shrink = decisions.shrinks[0]
    assert shrink.job_id == job.job_id and shrink.for_job == urgent.job_id and shrink.version == 3
    assert job.elastic is not None
    newest = [t.task_id for t in job.elastic.extras[:2]]  # the highest indexes: the newest grants
    assert list(shrink.task_ids) == newest
    assert "gives back 2 extra workers (worker-3, worker-2) for job 'u'" in shrink.message
    assert decisions.pending[urgent.job_id].code == PREEMPTING
    assert decisions.grants == ()  # the room is held for the job that asked for it


def test_extras_of_the_lowest_priority_job_go_first() -> None:
    nodes = [make_node("n1").gpus(4).build()]
    nodes, low = elastic("low", nodes, lo=1, hi=2, bound=2, priority=0)
    nodes, high = elastic("high", nodes, lo=1, hi=2, bound=2, priority=500)
    decisions = cycle(nodes, [make_job("p").gpus(1).build()], [low, high])
    assert [(s.job_id, len(s.task_ids)) for s in decisions.shrinks] == [(low.job_id, 1)]


def test_never_below_the_gang_and_never_for_nothing() -> None:
    # one extra cannot make room for two GPUs: nothing is taken, the job waits
    nodes, job = elastic("e", [make_node("n1").gpus(4).build()], lo=3, hi=4, bound=4)
    decisions = cycle(nodes, [make_job("two").gpus(1).workers(2).build()], [job])
    assert decisions.shrinks == () and decisions.evictions == () and decisions.binds == ()


def test_a_job_waiting_on_extras_takes_no_more() -> None:
    nodes, job = elastic("e", [make_node("n1").gpus(2).build()], lo=1, hi=2, bound=2)
    claimant = dataclasses.replace(make_job("c").gpus(1).build(), preempting=True)
    decisions = cycle(nodes, [claimant], [job])
    assert decisions.shrinks == () and decisions.pending[claimant.job_id].code == PREEMPTING


def test_no_grants_while_a_job_waits_for_room_being_freed() -> None:
    # the claimant's extras are still draining: the free GPU must not go back to the elastic job
    nodes, job = elastic("e", [make_node("n1").gpus(3).build()], lo=1, hi=3, bound=2)
    claimant = dataclasses.replace(make_job("x").gpus(1).workers(2).build(), preempting=True)
    decisions = cycle(nodes, [claimant], [job])
    assert decisions.grants == () and decisions.shrinks == ()


def test_a_job_that_gave_back_extras_is_not_also_evicted() -> None:
    nodes = [make_node("n1").gpus(4).build()]
    nodes, a = elastic("a", nodes, lo=1, hi=2, bound=2, priority=0, preemptible=True, minutes=1)
    nodes, b = elastic("b", nodes, lo=2, hi=2, bound=2, priority=0, preemptible=True, minutes=30)
    x = make_job("x").gpus(1).priority(2000).submitted(0).build()
    y = make_job("y").gpus(1).workers(2).priority(1000).submitted(1).build()
    decisions = cycle(nodes, [x, y], [a, b])
    assert [(s.job_id, s.for_job) for s in decisions.shrinks] == [(a.job_id, x.job_id)]
    assert [(e.job_id, e.for_job) for e in decisions.evictions] == [(b.job_id, y.job_id)]


def test_only_extras_that_help_are_taken() -> None:
    # the lowest-priority extra comes first in order but is on an A100: no use to an H100 job
    nodes = [make_node("n1").gpus(2).build(), make_node("n2").gpus(2, model="H100-80GB").build()]
    nodes, low = elastic("low", nodes, lo=1, hi=2, bound=2, priority=0)
    nodes, mid = elastic("mid", nodes, lo=1, hi=2, bound=2, priority=5)
    assert {p.node for p in low.placements} == {"n1"} and {p.node for p in mid.placements} == {"n2"}
    decisions = cycle(nodes, [make_job("h").gpus(1).models("H100").build()], [low, mid])
    assert [(s.job_id, len(s.task_ids)) for s in decisions.shrinks] == [(mid.job_id, 1)]


def test_a_borrowing_queue_cannot_take_extras_a_queue_is_owed() -> None:
    queues = [make_queue("owed").guaranteed(gpu=2).build(), make_queue("borrower").build()]
    nodes, job = elastic("e", [make_node("n1").gpus(2).build()], lo=1, hi=2, bound=2, queue="owed")
    waiting = make_job("w").gpus(1).queue("borrower").build()
    assert cycle(nodes, [waiting], [job], queues).shrinks == ()
    # a job of the same queue may take them
    mine = make_job("m").gpus(1).queue("owed").build()
    assert len(cycle(nodes, [mine], [job], queues).shrinks) == 1
