from collections.abc import Iterable

import pytest

from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.model import (
    GANG_TOO_LARGE,
    UNSCHEDULABLE,
    Amounts,
    Decisions,
    NodeState,
    PendingJob,
    QueueState,
    RunningJob,
)
from tessera.scheduler.quota import QUOTA_EXCEEDED, QueueTree, gpu_charge, running_charge
from tests.scheduler.builders import (
    JobBuilder,
    QueueBuilder,
    job_id,
    make_job,
    make_node,
    make_queue,
    snapshot,
    start,
)

GI = 1024


def run(
    nodes: Iterable[NodeState],
    jobs: Iterable[PendingJob],
    running: Iterable[RunningJob] = (),
    queues: Iterable[QueueState] = (),
) -> Decisions:
    return TesseraScheduler().cycle(snapshot(nodes, jobs, running, queues))


def jobs_of(queue: str, count: int, gpus: float = 1) -> list[PendingJob]:
    return [make_job(f"{queue}{i}").gpus(gpus).queue(queue).submitted(i).build() for i in range(count)]


def bound(decisions: Decisions, jobs: Iterable[PendingJob]) -> list[str]:
    names = {j.job_id: j.name for j in jobs}
    return [names[b.job_id] for b in decisions.binds]


@pytest.mark.parametrize(
    ("gpu_memory", "request_", "charge"),
    [
        (80 * GI, make_job("c").gpus(1), 1.0),
        (80 * GI, make_job("c").gpus(2), 2.0),
        (80 * GI, make_job("c").gpus(0.5), 0.5),
        (16 * GI, make_job("c").slice(memory="8Gi"), 0.5),  # half the memory of a small GPU
        (80 * GI, make_job("c").slice(memory="8Gi"), 0.1),  # a tenth of a large one
        (80 * GI, make_job("c").slice("8Gi", 40), 0.4),  # compute is the larger share
        (80 * GI, make_job("c").slice("40Gi", 10), 0.5),  # memory is
        (80 * GI, make_job("c").cpu(4), 0.0),
    ],
)
def test_charge_is_the_larger_share_of_the_gpu_it_landed_on(
    gpu_memory: int, request_: JobBuilder, charge: float
) -> None:
    nodes, (job,) = start(
        [make_node("n1").gpus(2, "GPU", gpu_memory)], [request_.cpu(3).memory("2Gi").running()]
    )
    assert running_charge(job, {g.uuid: g.memory_mib for g in nodes[0].gpus}) == pytest.approx(
        Amounts(charge, 3.0, 2048.0)
    )
    assert gpu_charge(job.placements, {}) == pytest.approx(sum(p.compute_pct for p in job.placements) / 100)


@pytest.mark.parametrize(
    ("queue", "running", "pending", "expected"),
    [
        # Guaranteed 2 + borrowing 2: four one-GPU jobs, not five.
        (make_queue("q").guaranteed(gpu=2).borrow(gpu=2), 0, 5, 4),
        (make_queue("q").guaranteed(gpu=2).borrow(gpu=0), 0, 5, 2),
        # What already runs counts.
        (make_queue("q").guaranteed(gpu=2).borrow(gpu=2), 3, 5, 1),
        # No borrowing limit: it may borrow all the idle capacity.
        (make_queue("q").guaranteed(gpu=1), 0, 9, 8),
        # Not configured at all: unlimited.
        (None, 0, 9, 8),
    ],
    ids=["borrow-2", "no-borrowing", "running-counts", "unlimited-borrowing", "unknown-queue"],
)
def test_borrowing_limit_of_a_queue(
    queue: QueueBuilder | None, running: int, pending: int, expected: int
) -> None:
    nodes, held = start(
        [make_node("n1").gpus(8)], [make_job(f"r{i}").gpus(1).queue("q").running() for i in range(running)]
    )
    jobs = jobs_of("q", pending)
    decisions = run(nodes, jobs, held, [queue.build()] if queue else [])
    assert len(decisions.binds) == expected
    assert {r.code for r in decisions.pending.values()} <= {QUOTA_EXCEEDED, UNSCHEDULABLE}


def test_quota_exceeded_message_names_queue_and_resource() -> None:
    queues = [make_queue("research").guaranteed(gpu=4).borrow(gpu=4).build()]
    nodes, held = start([make_node("n1").gpus(8)], [make_job("big").gpus(8).queue("research").running()])
    decisions = run([make_node("n2").gpus(8).build(), *nodes], jobs_of("research", 1), held, queues)
    reason = decisions.pending[job_id("research0")]
    assert (reason.code, reason.message) == (
        QUOTA_EXCEEDED,
        "queue 'research' is at its borrowing limit: gpu 8/8 (guaranteed 4 + borrowing 4); "
        "this job needs 1 more",
    )


def test_an_ancestor_limit_binds_its_children() -> None:
    queues = [
        make_queue("org").guaranteed(gpu=2).borrow(gpu=1).build(),
        make_queue("a").parent("org").build(),
        make_queue("b").parent("org").build(),
    ]
    jobs = jobs_of("a", 2) + jobs_of("b", 2)
    decisions = run([make_node("n1").gpus(8).build()], jobs, queues=queues)
    assert bound(decisions, jobs) == ["a0", "b0", "a1"]
    assert decisions.pending[job_id("b1")].message == (
        "queue 'org' is at its borrowing limit: gpu 3/3 (guaranteed 2 + borrowing 1); this job needs 1 more"
    )


def test_slices_are_charged_by_the_gpu_they_land_on() -> None:
    # Limit 1 GPU-equivalent: 8Gi slices of a 16Gi GPU cost 0.5 each, so two fit, not three.
    queues = [make_queue("q").guaranteed(gpu=1).borrow(gpu=0).build()]
    jobs = [make_job(f"s{i}").slice(memory="8Gi").queue("q").submitted(i).build() for i in range(3)]
    decisions = run([make_node("n1").gpus(2, "T4", 16 * GI).build()], jobs, queues=queues)
    assert bound(decisions, jobs) == ["s0", "s1"]
    # The same slices on an 80Gi GPU cost 0.1: all three fit the quota.
    decisions = run([make_node("n1").gpus(1, "A100", 80 * GI).build()], jobs, queues=queues)
    assert bound(decisions, jobs) == ["s0", "s1", "s2"]


def test_only_resources_a_queue_sets_are_limited() -> None:
    # A CPU quota: GPUs are not limited, CPU is (2 jobs of 2 cores in 4).
    queues = [make_queue("q").guaranteed(cpu=2).borrow(cpu=2).build()]
    jobs = [make_job(f"c{i}").gpus(1).cpu(2).queue("q").submitted(i).build() for i in range(3)]
    decisions = run([make_node("n1").gpus(4).build()], jobs, queues=queues)
    assert bound(decisions, jobs) == ["c0", "c1"]
    assert "cpu 4/4 (guaranteed 2 + borrowing 2)" in decisions.pending[job_id("c2")].message


def test_min_available_gang_keeps_only_the_tasks_the_quota_allows() -> None:
    queues = [make_queue("q").guaranteed(gpu=2).borrow(gpu=1).build()]
    elastic = make_job("e").gpus(1).workers(5).min_available(2).queue("q").build()
    decisions = run([make_node("n1").gpus(8).build()], [elastic], queues=queues)
    (bind,) = decisions.binds
    assert [p.task_id for p in bind.placements] == [t.task_id for t in elastic.tasks[:3]]
    # A gang whose minimum alone passes the limit waits.
    rigid = make_job("r").gpus(1).workers(4).min_available(4).queue("q").build()
    decisions = run([make_node("n1").gpus(8).build()], [rigid], queues=queues)
    assert decisions.pending[job_id("r")].code == QUOTA_EXCEEDED


def test_a_gang_that_could_never_fit_says_so_before_quota() -> None:
    queues = [make_queue("q").guaranteed(gpu=1).borrow(gpu=0).build()]
    decisions = run(
        [make_node("n1").gpus(2).build()], [make_job("g").gpus(1).workers(4).queue("q").build()], [], queues
    )
    assert decisions.pending[job_id("g")].code == GANG_TOO_LARGE


def test_queue_tree_paths_survive_bad_configuration() -> None:
    queues = [
        QueueState("a", parent="b"),
        QueueState("b", parent="a"),  # a cycle: cut where found
        QueueState("c", parent="missing"),  # an unknown parent: a root
        QueueState("d", parent="c"),
    ]
    tree = QueueTree(queues, ["d", "loose"], Amounts(8, 64, 1024))
    assert tree.paths == {"a": ("a", "b"), "b": ("b",), "c": ("c",), "d": ("d", "c"), "loose": ("loose",)}
    tree.add("d", Amounts(2, 0, 0))
    assert tree.usage["c"] == Amounts(2, 0, 0) and tree.own["c"] == Amounts()
    assert tree.share("c") == pytest.approx(0.25)
