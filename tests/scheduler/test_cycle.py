import dataclasses
import random
from collections.abc import Iterable
from datetime import timedelta

import pytest

from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.firstfit import FirstFit
from tessera.scheduler.model import (
    COMPUTE_EPSILON,
    GANG_TOO_LARGE,
    NO_NODES,
    NO_READY_NODES,
    UNSCHEDULABLE,
    Amounts,
    Decisions,
    NodeState,
    PendingJob,
    QueueState,
    RunningJob,
    Scheduler,
    Snapshot,
)
from tessera.scheduler.preempt import PREEMPTED, PREEMPTING, RECLAIMED
from tessera.scheduler.quota import QUOTA_EXCEEDED, running_charge
from tests.scheduler.builders import (
    NOW,
    JobBuilder,
    NodeBuilder,
    apply_binds,
    job_id,
    make_job,
    make_node,
    make_queue,
    snapshot,
    start,
    to_running,
)
from tests.scheduler.test_firstfit import _mixed_case

GI = 1024


def run(
    nodes: Iterable[NodeState],
    jobs: Iterable[PendingJob],
    running: Iterable[RunningJob] = (),
    queues: Iterable[QueueState] = (),
) -> Decisions:
    return TesseraScheduler().cycle(snapshot(nodes, jobs, running, queues))


def bound_names(decisions: Decisions, names: Iterable[str]) -> list[str]:
    """Which of ``names`` were bound, in bind order."""
    by_id = {job_id(n): n for n in names}
    return [by_id[b.job_id] for b in decisions.binds if b.job_id in by_id]


def many(prefix: str, count: int, queue: str = "default") -> list[PendingJob]:
    """``count`` one-GPU jobs in one queue, one minute apart."""
    return [make_job(f"{prefix}{i}").gpus(1).queue(queue).submitted(i).build() for i in range(count)]


def test_protocol_and_name() -> None:
    assert isinstance(TesseraScheduler(), Scheduler) and TesseraScheduler.name == "tessera"


@pytest.mark.parametrize(
    ("nodes", "job", "code", "message"),
    [
        ([], make_job("j").gpus(1), NO_NODES, "no node has joined yet"),
        ([make_node("n1").gpus(1).not_ready()], make_job("j").gpus(1), NO_READY_NODES, "no node is Ready"),
        (
            [make_node("node-a").gpus(1).gpu_used(0, "60Gi", 70)],
            make_job("j").slice("40Gi", 50),
            UNSCHEDULABLE,
            "waiting for capacity: task worker-0 needs 50% compute on one GPU; "
            "most free on a Ready node: 30% (node-a, GPU 0)",
        ),
        (
            [make_node("node-a").gpus(1).gpu_used(0, "60Gi", 20)],
            make_job("j").slice("40Gi", 50),
            UNSCHEDULABLE,
            "waiting for capacity: task worker-0 needs 40Gi GPU memory on one GPU; "
            "most free on a Ready node: 20Gi (node-a, GPU 0)",
        ),
        (
            # Memory on GPU 0, compute on GPU 1: only a real scan can tell, and says which GPU is closest.
            [make_node("n1").gpus(2).gpu_used(0, "10Gi", 80).gpu_used(1, "60Gi", 10)],
            make_job("j").slice("40Gi", 50),
            UNSCHEDULABLE,
            "waiting for capacity: task worker-0 needs 40Gi GPU memory and 50% compute on one GPU; "
            "most free on a Ready node: 20Gi / 90% (n1, GPU 1)",
        ),
        (
            [make_node("n1").gpus(2), make_node("n2").gpus(2)],
            make_job("j").gpus(1).workers(8),
            GANG_TOO_LARGE,
            "gang of 8 tasks needs more than the whole cluster offers: task worker-4 needs 1 idle whole GPU "
            "on one node; most idle on any node: 0 (n1) (after placing 4 earlier tasks of this job)",
        ),
        (
            [make_node("n1").gpus(2), make_node("n2").gpus(2)],
            make_job("j").gpus(1).workers(8).min_available(5),
            GANG_TOO_LARGE,
            "gang of at least 5 of 8 tasks needs more than the whole cluster offers: task worker-4 needs "
            "1 idle whole GPU on one node; most idle on any node: 0 (n1)",
        ),
        (
            [make_node("n1").gpus(2), make_node("n2").gpus(2).gpu_used(0, "1Gi", 1)],
            make_job("j").gpus(1).workers(4),
            UNSCHEDULABLE,
            "waiting for capacity: gang of 4 tasks needs 4 idle whole GPUs in all; "
            "the Ready nodes have 3 idle whole GPUs left",
        ),
        (
            [make_node("n1").cpu(8, used=6).gpus(1)],
            make_job("j").cpu(4).memory("1Gi"),
            UNSCHEDULABLE,
            "waiting for capacity: task worker-0 needs cpu 4 on one node; "
            "most free on a Ready node: cpu 2 (n1)",
        ),
        (
            [make_node("n1").gpus(1, "T4", 16 * GI), make_node("n2").gpus(1, "A100-80GB")],
            make_job("j").gpus(1).models("H100"),
            GANG_TOO_LARGE,
            "gang of 1 task needs more than the whole cluster offers: task worker-0 needs a GPU of model "
            "H100; no node has one (models: A100-80GB, T4)",
        ),
        (
            [make_node("n1").gpus(1, "T4", 16 * GI), make_node("n2").gpus(1, "H100").not_ready()],
            make_job("j").gpus(1).models("H100"),
            UNSCHEDULABLE,
            "waiting for capacity: task worker-0 needs a GPU of model H100; "
            "no Ready node has one (models: T4)",
        ),
        (
            [make_node("n1").gpus(1).mig_mode(0, ("3g.40gb", "40Gi"))],
            make_job("j").mig("1g.10gb"),
            GANG_TOO_LARGE,
            "gang of 1 task needs more than the whole cluster offers: task worker-0 needs a MIG instance "
            "1g.10gb; no node has one (profiles: 3g.40gb)",
        ),
        (
            [make_node("n1").gpus(1).mig_mode(0, ("1g.10gb", "10Gi")).mig_used(0, 0)],
            make_job("j").mig("1g.10gb"),
            UNSCHEDULABLE,  # taken by no running job the snapshot knows: nothing to reserve behind
            "waiting for capacity: task worker-0 needs a free MIG instance 1g.10gb; "
            "on a Ready node: 1, all taken",
        ),
    ],
    ids=[
        "no-nodes",
        "none-ready",
        "slice-compute-short",
        "slice-memory-short",
        "slice-split-across-gpus",
        "gang-too-large",
        "elastic-gang-too-large",
        "gang-short-in-total",
        "cpu-short",
        "no-model",
        "model-not-ready",
        "mig-profile-missing",
        "mig-all-taken",
    ],
)
def test_pending_reasons(nodes: list, job: JobBuilder, code: str, message: str) -> None:
    decisions = run([n.build() for n in nodes], [job.build()])
    assert decisions.binds == () and decisions.evictions == ()
    reason = decisions.pending[job_id("j")]
    assert (reason.code, reason.message) == (code, message)


def test_gang_spans_nodes_and_is_all_or_nothing() -> None:
    nodes = [make_node("n1").gpus(2).cpu(2).build(), make_node("n2").gpus(2).gpu_used(1, "80Gi", 100).build()]
    jobs = [
        make_job("g").gpus(1).cpu(1).workers(4).build(),
        make_job("small").gpus(1).cpu(2).priority(0).build(),
    ]
    # The gang placed three tasks tentatively, failed the fourth and let go of all of them: small
    # finds every GPU the gang had taken free again.
    first = TesseraScheduler().cycle(dataclasses.replace(snapshot(nodes, jobs), placement="firstfit"))
    assert first.pending[job_id("g")].code == UNSCHEDULABLE
    assert bound_names(first, ["g", "small"]) == ["small"]
    assert [(p.node, p.gpu_index) for p in first.binds[0].placements] == [("n1", 0)]
    # The default policy packs it next to the used GPU instead, keeping n1's two GPUs whole.
    packed = run(nodes, jobs)
    assert bound_names(packed, ["g", "small"]) == ["small"]
    assert [(p.node, p.gpu_index) for p in packed.binds[0].placements] == [("n2", 0)]


@pytest.mark.parametrize(
    ("free_gpus", "placed", "message"),
    [
        (4, 4, None),
        (3, 3, None),
        (2, 2, None),
        (
            1,
            0,
            "waiting for capacity: gang of 2 tasks needs 2 idle whole GPUs in all; "
            "the Ready nodes have 1 idle whole GPU left",
        ),
    ],
)
def test_min_available_binds_as_many_tasks_as_fit(free_gpus: int, placed: int, message: str | None) -> None:
    node = make_node("n1").gpus(4)
    for i in range(free_gpus, 4):
        node.gpu_used(i, "1Gi", 1)
    job = make_job("e").gpus(1).workers(4).min_available(2).build()
    decisions = run([node.build()], [job])
    if message is None:
        (bind,) = decisions.binds
        assert [p.task_id for p in bind.placements] == [t.task_id for t in job.tasks[:placed]]
    else:
        assert decisions.pending[job_id("e")].message == message


def test_min_available_counts_tasks_placed_past_one_that_does_not_fit() -> None:
    # The big task fits nowhere now; the two small ones after it still make the gang of 2.
    job = make_job("e").gpus(1).also("big", 1, gpus=4).also("tail", 1, gpus=1).min_available(2).build()
    decisions = run([make_node("n1").gpus(2).build()], [job])
    (bind,) = decisions.binds
    assert [p.task_id for p in bind.placements] == [job.tasks[0].task_id, job.tasks[2].task_id]


def test_elastic_gang_message_says_how_many_fit() -> None:
    # Two nodes with one idle GPU each but CPU for one task only: the scan places 1 of the 3 needed.
    nodes = [make_node("n1").gpus(1).cpu(4), make_node("n2").gpus(1).cpu(4, used=3)]
    job = make_job("e").gpus(1).cpu(2).workers(3).min_available(2)
    decisions = run([n.build() for n in nodes], [job.build()])
    assert decisions.pending[job_id("e")].message == (
        "waiting for capacity: gang needs 2 of its 3 tasks placed together, 1 fit now: task worker-1 fits "
        "no single node: the GPUs it could use and the free cpu/memory it needs are on different nodes"
    )


@pytest.mark.parametrize(
    ("weights", "expected"),
    [((1, 1), (3, 3)), ((2, 1), (4, 2)), ((1, 2), (2, 4)), ((5, 1), (5, 1))],
)
def test_drf_shares_capacity_by_weight(weights: tuple[float, float], expected: tuple[int, int]) -> None:
    queues = [make_queue("a").weight(weights[0]).build(), make_queue("b").weight(weights[1]).build()]
    jobs = many("a", 6, queue="a") + many("b", 6, queue="b")
    decisions = run([make_node("n1").gpus(6).build()], jobs, queues=queues)
    got = tuple(len(bound_names(decisions, [j.name for j in jobs if j.queue == q])) for q in "ab")
    assert got == expected


def test_drf_is_hierarchical() -> None:
    # x's two children share x's half; y alone gets the other half.
    queues = [
        make_queue("x").build(),
        make_queue("x1").parent("x").build(),
        make_queue("x2").parent("x").build(),
        make_queue("y").build(),
    ]
    jobs = many("p", 8, queue="x1") + many("q", 8, queue="x2") + many("r", 8, queue="y")
    decisions = run([make_node("n1").gpus(8).build()], jobs, queues=queues)
    counts = [len(bound_names(decisions, [j.name for j in jobs if j.queue == q])) for q in ("x1", "x2", "y")]
    assert counts == [2, 2, 4]


def test_drf_counts_running_usage() -> None:
    nodes, running = start([make_node("n1").gpus(8)], [make_job("old").gpus(4).queue("a").running()])
    jobs = many("a", 4, queue="a") + many("b", 4, queue="b")
    decisions = run(nodes, jobs, running)
    # b starts at share 0 and a at 4/8, so b takes every free GPU before a would be level with it.
    assert bound_names(decisions, [j.name for j in jobs]) == ["b0", "b1", "b2", "b3"]


def test_dominant_resource_is_what_counts() -> None:
    # a holds 3/4 of the CPU but no GPU: its dominant share (CPU, 0.75) stays above b's (GPU) at
    # 1 of 2 GPUs, so b gets both GPUs though a holds none.
    node = make_node("n1").gpus(2).cpu(16)
    nodes, running = start([node], [make_job("cpu-heavy").cpu(12).queue("a").running()])
    jobs = [make_job("a1").gpus(1).queue("a").build(), make_job("b1").gpus(1).queue("b").submitted(5).build()]
    jobs.append(make_job("b2").gpus(1).queue("b").submitted(6).build())
    decisions = run(nodes, jobs, running)
    assert bound_names(decisions, ["a1", "b1", "b2"]) == ["b1", "b2"]


def test_priority_then_submit_time_within_a_queue() -> None:
    jobs = [
        make_job("late-high").gpus(1).priority(10).submitted(9).build(),
        make_job("early-low").gpus(1).priority(0).submitted(0).build(),
        make_job("early-high").gpus(1).priority(10).submitted(1).build(),
    ]
    decisions = run([make_node("n1").gpus(2).build()], jobs)
    assert bound_names(decisions, [j.name for j in jobs]) == ["early-high", "late-high"]


def test_what_a_queue_is_owed_goes_before_borrowing() -> None:
    # By share alone b (0) would go first and take a GPU, leaving one for a's 2-GPU job. But a is
    # owed 3 GPUs and holds 1: its job is within its guarantee, b's are borrowed capacity.
    nodes, running = start([make_node("n1").gpus(3)], [make_job("a-old").gpus(1).queue("a").running()])
    jobs = [make_job("a-new").gpus(2).queue("a").build(), *many("b", 2, queue="b")]
    decisions = run(nodes, jobs, running, [make_queue("a").guaranteed(gpu=3).build()])
    assert bound_names(decisions, [j.name for j in jobs]) == ["a-new"]


def _random_job(rnd: random.Random, name: str, queues: list[str]) -> JobBuilder:
    jb = (
        make_job(name)
        .queue(rnd.choice(queues))
        .priority(rnd.choice([0, 50, 100]))
        .submitted(rnd.randint(0, 9))
    )
    jb.cpu(rnd.choice([0.5, 1, 2])).memory(rnd.choice(["1Gi", "4Gi"])).preemptible(rnd.random() < 0.6)
    workers = rnd.choice([1, 1, 1, 2, 3])
    jb.workers(workers)
    if workers > 1 and rnd.random() < 0.4:
        jb.min_available(rnd.randint(1, workers))
    if rnd.random() < 0.6:
        jb.runtime(rnd.choice([2, 5, 30, 240]))
    form = rnd.choice(["none", "whole", "whole", "fraction", "memory", "both"])
    if form == "whole":
        jb.gpus(rnd.choice([1, 1, 2]))
    elif form == "fraction":
        jb.gpus(rnd.choice([0.25, 0.5, 0.75]))
    elif form in ("memory", "both"):
        jb.slice(f"{rnd.randint(2, 30)}Gi", rnd.randint(10, 90) if form == "both" else None)
    return jb


def random_case(seed: int) -> tuple[Snapshot, dict]:
    """A small random cluster with queues, running jobs and pending jobs; and every job's spec."""
    rnd = random.Random(seed)
    queues: list[QueueState] = []
    names = ["a", "b", "c"][: rnd.randint(1, 3)]
    nested = rnd.random() < 0.4
    if nested:
        org = make_queue("org").guaranteed(gpu=rnd.choice([2, 4]))
        queues.append((org.borrow(gpu=rnd.choice([0, 2])) if rnd.random() < 0.5 else org).build())
    for name in names:
        qb = make_queue(name).guaranteed(gpu=rnd.choice([0, 1, 2, 3])).weight(rnd.choice([1, 2]))
        if rnd.random() < 0.5:
            qb.borrow(gpu=rnd.choice([0, 1, 2]))
        if nested and name != "c":
            qb.parent("org")
        queues.append(qb.build())
    pool = [*names, "default"] if rnd.random() < 0.3 else names
    nodes = []
    for n in range(rnd.randint(1, 3)):
        model, size = rnd.choice([("A100-80GB", 80 * GI), ("L4", 24 * GI)])
        nb = make_node(f"n{n}").cpu(rnd.choice([8, 16])).memory("64Gi").gpus(rnd.randint(2, 4), model, size)
        if rnd.random() < 0.1:
            nb.not_ready()
        nodes.append(nb.build())
    specs = {}
    running: list[RunningJob] = []
    for i in range(rnd.randint(0, 4)):
        job = _random_job(rnd, f"r{seed}-{i}", pool).build()
        first = FirstFit().cycle(snapshot(nodes, [job]))
        if first.binds:
            nodes = apply_binds(nodes, [job], first.binds)
            specs[job.job_id] = job
            running.append(to_running(job, first.binds[0], NOW - timedelta(minutes=rnd.randint(0, 120))))
    pending = [_random_job(rnd, f"p{seed}-{i}", pool).build() for i in range(rnd.randint(1, 8))]
    specs.update({j.job_id: j for j in pending})
    return Snapshot(
        nodes=tuple(nodes), pending=tuple(pending), now=NOW, running=tuple(running), queues=tuple(queues)
    ), specs


def _limits(queue: QueueState) -> dict[str, float]:
    """Per governed resource, guaranteed + borrowing limit (the documented quota semantics)."""
    if queue.borrowing_limit is None:
        return {}
    out = {}
    for field in ("gpu", "cpu", "memory_mib"):
        owed, more = getattr(queue.guaranteed, field), getattr(queue.borrowing_limit, field)
        if owed > 0 or more > 0:
            out[field] = owed + more
    return out


def check(snap: Snapshot, decisions: Decisions) -> None:
    """The invariants every cycle keeps."""
    jobs = {j.job_id: j for j in snap.pending}
    bound_ids = [b.job_id for b in decisions.binds]
    assert len(set(bound_ids)) == len(bound_ids) and set(bound_ids).isdisjoint(decisions.pending)
    assert set(bound_ids) | set(decisions.pending) == set(jobs)
    nodes = {n.name: n for n in snap.nodes}
    for bind in decisions.binds:
        job = jobs[bind.job_id]
        tasks = {t.task_id: t for t in job.tasks}
        placed = bind.task_nodes()
        assert set(placed) <= set(tasks) and len(placed) >= min(job.gang_size, len(job.tasks))
        for tid, where in placed.items():
            mine = [p for p in bind.placements if p.task_id == tid]
            assert nodes[where].ready and len({p.node for p in mine}) == 1
            assert len(mine) == max(1, tasks[tid].resources.gpu_count)
    # Binds fit next to everything running, victims included: they have not stopped yet.
    for node in apply_binds(snap.nodes, [jobs[i] for i in bound_ids], decisions.binds):
        assert node.used_cpu <= node.cpu + COMPUTE_EPSILON and node.used_memory_mib <= node.memory_mib
        for gpu in node.gpus:
            assert gpu.used_memory_mib <= gpu.memory_mib and gpu.used_compute_pct <= 100 + COMPUTE_EPSILON
    # No queue a job was bound into ends past its borrowing limit.
    gpu_memory = {g.uuid: g.memory_mib for n in snap.nodes for g in n.gpus}
    evicted = {e.job_id for e in decisions.evictions}
    assert len(evicted) == len(decisions.evictions)
    held = [r for r in snap.running if r.job_id not in evicted]
    held += [to_running(jobs[b.job_id], b, NOW) for b in decisions.binds]
    states = {q.name: q for q in snap.queues}

    def path(queue: str) -> list[str]:
        out = []
        while queue in states and queue not in out:
            out.append(queue)
            queue = states[queue].parent or ""
        return out

    usage: dict[str, Amounts] = {}
    for holder in held:
        for name in path(holder.queue):
            usage[name] = usage.get(name, Amounts()) + running_charge(holder, gpu_memory)
    grew = {name for b in decisions.binds for name in path(jobs[b.job_id].queue)}
    for name in grew:
        for field, limit in _limits(states[name]).items():
            assert getattr(usage[name], field) <= limit + 1e-6, (name, field)
    # Evictions: whole running jobs, for a job now waiting on them, for a reason that holds.
    running = {r.job_id: r for r in snap.running}
    for eviction in decisions.evictions:
        victim, preemptor = running[eviction.job_id], jobs[eviction.for_job]
        assert decisions.pending[preemptor.job_id].code == PREEMPTING
        assert eviction.reason in (PREEMPTED, RECLAIMED)
        if eviction.reason == PREEMPTED:
            assert victim.preemptible and victim.priority < preemptor.priority
            assert victim.queue == preemptor.queue


def test_random_cases_keep_the_invariants() -> None:
    seen: dict[str, int] = {}
    for seed in range(200):
        snap, _ = random_case(seed)
        decisions = TesseraScheduler().cycle(snap)
        check(snap, decisions)
        for reason in decisions.pending.values():
            seen[reason.code] = seen.get(reason.code, 0) + 1
        seen["bind"] = seen.get("bind", 0) + len(decisions.binds)
        seen["evict"] = seen.get("evict", 0) + len(decisions.evictions)
        seen["partial"] = seen.get("partial", 0) + sum(
            len(b.task_nodes())
            < len({t.task_id for j in snap.pending if j.job_id == b.job_id for t in j.tasks})
            for b in decisions.binds
        )
    # The generator must reach every outcome, or the checks above prove little.
    for outcome in ("bind", "evict", "partial", UNSCHEDULABLE, QUOTA_EXCEEDED, PREEMPTING, GANG_TOO_LARGE):
        assert seen.get(outcome, 0) >= 3, (outcome, seen)


def test_places_exactly_like_firstfit_without_queues_or_running_jobs() -> None:
    # One queue, nothing to preempt: the order is priority then submit time, and with the firstfit
    # placement the binds must match FirstFit's (the free-capacity index only skips what cannot fit).
    for seed in range(200):
        nodes, jobs = _mixed_case(seed)
        ours = TesseraScheduler().cycle(dataclasses.replace(snapshot(nodes, jobs), placement="firstfit"))
        assert ours.binds == FirstFit().cycle(snapshot(nodes, jobs)).binds, seed
        assert {r.code for r in ours.pending.values()} <= {UNSCHEDULABLE, GANG_TOO_LARGE, NO_READY_NODES}


def test_same_snapshot_same_decisions() -> None:
    for seed in range(60):
        snap, _ = random_case(seed)
        first = TesseraScheduler().cycle(snap)
        again = TesseraScheduler().cycle(snap)
        shuffled = TesseraScheduler().cycle(
            Snapshot(
                nodes=snap.nodes[::-1],
                pending=snap.pending[::-1],
                now=snap.now,
                running=snap.running[::-1],
                queues=snap.queues[::-1],
            )
        )
        for other in (again, shuffled):
            assert other.binds == first.binds and other.evictions == first.evictions
            assert list(other.pending.items()) == list(first.pending.items())


def test_whole_gpu_tasks_take_idle_gpus_only() -> None:
    node = make_node("n1").gpus(2).gpu_used(0, "1Gi", 5).build()
    decisions = run([node], [make_job("w").gpus(1).build()])
    assert [(p.gpu_index, p.memory_mib, p.compute_pct) for p in decisions.binds[0].placements] == [
        (1, 81920, 100.0)
    ]


def test_mig_instances_are_placed_whole_and_only_for_their_profile() -> None:
    node = make_node("n1").gpus(2).mig_mode(0, ("1g.10gb", "10Gi"), ("1g.10gb", "10Gi"), ("3g.40gb", "40Gi"))
    jobs = [
        make_job("pair").mig("1g.10gb").workers(2).submitted(0),
        make_job("whole").gpus(1).submitted(1),
        make_job("third").mig("1g.10gb").submitted(2),
    ]
    decisions = run([node.build()], [j.build() for j in jobs])
    binds = {b.job_id: b for b in decisions.binds}
    pair = binds[job_id("pair")].placements
    assert sorted(p.mig_uuid or "" for p in pair) == ["MIG-GPU-n1-0-0", "MIG-GPU-n1-0-1"]
    assert all(p.gpu_uuid == "GPU-n1-0" and p.memory_mib == 10240 for p in pair)
    assert all(abs(p.compute_pct - 100 / 7) < 1e-9 for p in pair)
    [whole] = binds[job_id("whole")].placements
    assert whole.gpu_uuid == "GPU-n1-1" and whole.mig_uuid is None  # never the GPU in MIG mode
    reason = decisions.pending[job_id("third")]
    assert "needs a free MIG instance 1g.10gb" in reason.message and "2, all taken" in reason.message


def test_a_mig_victim_frees_its_instance() -> None:
    node = make_node("n1").gpus(1).mig_mode(0, ("1g.10gb", "10Gi"))
    nodes, running = start([node], [make_job("low").mig("1g.10gb").priority(0).preemptible()])
    assert nodes[0].gpus[0].mig[0].used
    decisions = run(nodes, [make_job("hi").mig("1g.10gb").priority(10).build()], running)
    assert [e.job_id for e in decisions.evictions] == [job_id("low")]


@pytest.mark.parametrize(
    ("node", "used", "gpus", "expected"),
    [
        # NVLink islands {0-3} and {4-7}, GPU 0 taken: 4 GPUs go to the island that is whole
        (make_node("n1").gpus(8).nvlink(range(4), range(4, 8)), [0], 4, [4, 5, 6, 7]),
        # 2 GPUs: best fit, the island with 3 idle, so the other stays whole for a 4-GPU task
        (make_node("n1").gpus(8).nvlink(range(4), range(4, 8)), [0], 2, [1, 2]),
        # no NVLink reported: NUMA nodes decide
        (make_node("n1").gpus(8).numa(range(4), range(4, 8)), [1], 4, [4, 5, 6, 7]),
        # no island can hold it: first idle GPUs, as without topology
        (make_node("n1").gpus(8).nvlink(range(4), range(4, 8)), [0, 4], 4, [1, 2, 3, 5]),
        (make_node("n1").gpus(8), [0], 4, [1, 2, 3, 4]),
    ],
    ids=["island", "island-best-fit", "numa", "no-group-fits", "no-topology"],
)
def test_multi_gpu_tasks_stay_on_one_nvlink_island_or_numa_node(
    node: NodeBuilder, used: list[int], gpus: int, expected: list[int]
) -> None:
    for index in used:
        node.gpu_used(index, "80Gi", 100)
    decisions = run([node.build()], [make_job("j").gpus(gpus).build()])
    [bind] = decisions.binds
    assert sorted(p.gpu_index or 0 for p in bind.placements) == expected
