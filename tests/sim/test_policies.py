"""Placement policies on small hand-built clusters: each policy's choice, ties, FGD's fragmentation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tessera.scheduler.policies import (
    POLICIES,
    ClusterState,
    FgdPolicy,
    FragModel,
    Placement,
    PodRequest,
    TesseraPolicy,
    TypicalPod,
    policy,
)
from tessera.scheduler.policies.fgd import frag_of

TYPICAL = [TypicalPod(2000, 500, 1, (), 2), TypicalPod(4000, 1000, 1, (), 1), TypicalPod(1000, 0, 0, (), 1)]


def cluster() -> ClusterState:
    """n0: 2 A GPUs / 32 CPU; n1: 4 A / 64; n2: 1 B / 16; n3: 8 B / 96 (listed out of name order)."""
    return ClusterState.build(
        names=["n3", "n1", "n0", "n2"],
        cpu_milli=[96_000, 64_000, 32_000, 16_000],
        memory_mib=[512_000, 256_000, 128_000, 64_000],
        gpus=[8, 4, 2, 1],
        models=["B", "A", "A", "B"],
    )


def share(milli: int, cpu: int = 1000) -> PodRequest:
    return PodRequest(cpu_milli=cpu, memory_mib=100, num_gpu=1, gpu_milli=milli)


def whole(count: int, cpu: int = 4000, models: tuple[str, ...] = ()) -> PodRequest:
    return PodRequest(cpu_milli=cpu, memory_mib=100, num_gpu=count, gpu_milli=1000, models=models)


CPU_POD = PodRequest(cpu_milli=8000, memory_mib=100)

# (case, setup placements, pod, {policy: expected placement})
CASES: list[tuple[str, list[tuple[PodRequest, Placement]], PodRequest, dict[str, Placement]]] = [
    (
        "empty cluster, one whole GPU",
        [],
        whole(1, cpu=8000),
        {
            "bestfit": Placement(2, (0,)),  # n2: least leftover (16 CPU, 1 GPU)
            "dotprod": Placement(2, (0,)),  # smallest dot product with its free vector
            "spread": Placement(3, (0,)),  # n3: most leftover
            "packing": Placement(2, (0,)),  # idle nodes score 33 - GPUs: 1-GPU node first
            "clustering": Placement(2, (0,)),  # idle: 25 + 25 * used / 8000 ties; n2 has least free
            "fgd": Placement(0, (0,)),
            "tessera": Placement(0, (0,)),
        },
    ),
    (
        "a shared GPU with room",
        [(share(300), Placement(1, (2,)))],
        share(500),
        {
            "packing": Placement(1, (2,)),  # case 1: onto the shared GPU (700 free)
            "clustering": Placement(1, (2,)),  # node hosting only shared pods
            "bestfit": Placement(2, (0,)),  # 16 CPU / 1 GPU node leaves the least
            "fgd": Placement(1, (2,)),  # filling 700 -> 200 removes more fragmentation
            "tessera": Placement(1, (2,)),
        },
    ),
    (
        "whole GPUs on a partly used node",
        [(share(300), Placement(1, (2,)))],
        whole(2),
        {
            "packing": Placement(1, (0, 1)),  # case 2 (48) beats an idle node (31, 25)
            "bestfit": Placement(0, (0, 1)),  # n0's 2 GPUs are used up
            "clustering": Placement(0, (0, 1)),  # idle n0 (25 + ...) beats n1 hosting shares (0 + ...)
        },
    ),
    (
        "GPU model filter",
        [],
        whole(1, models=("B",)),
        {
            "bestfit": Placement(2, (0,)),
            "spread": Placement(3, (0,)),
            "packing": Placement(2, (0,)),
            "fgd": Placement(2, (0,)),
        },
    ),
    (
        "CPU-only pod",
        [(share(300), Placement(1, (2,)))],
        CPU_POD,
        {
            "packing": Placement(0, ()),  # score 0 everywhere: lowest index
            "clustering": Placement(0, ()),
            "bestfit": Placement(2, ()),
            "spread": Placement(3, ()),
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "setup", "pod", "name", "expected"),
    [(case, setup, pod, name, exp) for case, setup, pod, table in CASES for name, exp in table.items()],
    ids=[f"{case}-{name}" for case, _, _, table in CASES for name in table],
)
def test_policy_choice(
    case: str, setup: list[tuple[PodRequest, Placement]], pod: PodRequest, name: str, expected: Placement
) -> None:
    state = cluster()
    for p, placement in setup:
        state.allocate(p, placement)
    chooser = policy(name, typical=TYPICAL)
    assert chooser.select(state, pod) == expected


def test_nodes_are_sorted_by_name() -> None:
    state = cluster()
    assert state.names == ("n0", "n1", "n2", "n3")
    assert state.gpu_free[0].tolist() == [1000, 1000, -1, -1, -1, -1, -1, -1]
    assert state.capacity_milli == 15_000


@pytest.mark.parametrize("name", POLICIES)
def test_no_feasible_node_gives_none(name: str) -> None:
    state = cluster()
    assert policy(name, typical=TYPICAL).select(state, whole(8, models=("A",))) is None
    assert policy(name, typical=TYPICAL).select(state, PodRequest(cpu_milli=200_000, memory_mib=1)) is None


@pytest.mark.parametrize("name", POLICIES)
def test_ties_go_to_the_lowest_rank(name: str) -> None:
    twins = ClusterState.build(["b", "a"], [8000, 8000], [100, 100], [2, 2], ["T4", "T4"])
    chooser = policy(name, typical=TYPICAL)
    pod = whole(1, cpu=1000)
    if name != "random":
        assert chooser.select(twins, pod) == Placement(0, (0,))
        twins.set_tie_order(np.array([1, 0]))
        assert policy(name, typical=TYPICAL).select(twins, pod) == Placement(1, (0,))


def test_random_is_seeded_and_uniform_over_feasible_nodes() -> None:
    state = cluster()
    pod = whole(1, models=("A",))  # n0 or n1
    picks = [policy("random", seed=9).select(state, pod) for _ in range(2)]
    assert picks[0] == picks[1]
    chooser = policy("random", seed=1)
    counts = Counter(p.node for p in (chooser.select(state, pod) for _ in range(400)) if p)
    assert set(counts) == {0, 1} and min(counts.values()) > 150
    gpus = Counter(p.gpus[0] for p in (chooser.select(state, share(200)) for _ in range(400)) if p)
    assert len(gpus) >= 4  # a random GPU, not always the first


def test_apply_and_release_round_trip() -> None:
    state = cluster()
    chooser = policy("bestfit")
    pod = share(250, cpu=3000)
    placement = chooser.place(state, pod)
    assert placement == Placement(2, (0,))
    assert state.gpu_free[2, 0] == 750 and state.cpu_free[2] == 13_000 and state.allocated_milli == 250
    assert state.affinity[2, 0] == 1
    chooser.release(state, pod, placement)
    assert state.allocated_milli == 0 and state.affinity.sum() == 0
    with pytest.raises(ValueError):
        state.release(pod, placement)
    with pytest.raises(ValueError):
        state.allocate(whole(2), Placement(2, (0, 1)))


def test_fgd_fragmentation_hand_computed() -> None:
    # one node, GPUs free [1000, 300], 10 CPU free, model A
    state = ClusterState.build(["n"], [20_000], [1000], [2], ["A"])
    state.allocate(PodRequest(10_000, 1, 1, 700), Placement(0, (1,)))
    typical = [
        TypicalPod(2000, 500, 1, (), 2),  # hostable; GPU 1 (300 < 500) is fragment: 300
        TypicalPod(4000, 1000, 1, (), 1),  # hostable; GPU 1 (300 < 1000) is fragment: 300
        TypicalPod(20_000, 200, 1, (), 1),  # needs more CPU than free: all 1300 is fragment
        TypicalPod(1000, 0, 0, (), 1),  # CPU-only: all 1300 is fragment
    ]
    # (2 * 300 + 300 + 1300 + 1300) / 5 = 700
    assert frag_of(state, typical).tolist() == [700.0]
    model = FragModel(typical, state.model_names, state.max_gpus)
    delta, ok = model.deltas(state, np.array([0]), share(300))
    # onto GPU 1 (300 -> 0, CPU 9000): (0 + 0 + 1000 + 1000) / 5 = 400, a decrease of 300
    # onto GPU 0 (1000 -> 700): the 1000 shape no longer fits: (600 + 1000 + 1000 + 1000) / 5 = 720
    assert (delta / model.covered).tolist() == [[-20.0, 300.0]]
    assert ok.tolist() == [[True, True]]
    fgd = FgdPolicy(typical)
    assert fgd.score(delta, model).tolist() == [[49.0, 57.0]]  # int(100 * sigmoid(x / 1000))
    assert fgd.select(state, share(300)) == Placement(0, (1,))


def test_fgd_scores_are_refreshed_after_changes() -> None:
    state = cluster()
    fgd = FgdPolicy(TYPICAL)
    first = fgd.select(state, share(500))
    assert first is not None
    fgd.apply(state, share(500), first)
    again = fgd.select(state, share(500))
    assert again == Placement(first.node, first.gpus)  # the half-used GPU now fits it best
    cold = FgdPolicy(TYPICAL).select(state, share(500))
    assert cold == again


def test_tessera_keeps_cpu_for_idle_gpus() -> None:
    # a: 4 GPUs but 6 CPU (the mix needs 2 milli-CPU per milli-GPU: 8 CPU); b: 4 GPUs, 40 CPU
    state = ClusterState.build(["a", "b"], [6000, 40_000], [10_000, 10_000], [4, 4], ["T4", "T4"])
    typical = [TypicalPod(2000, 1000, 1, (), 5), TypicalPod(1000, 0, 0, (), 1)]
    cpu_pod = PodRequest(cpu_milli=1000, memory_mib=10)
    # FGD: every typical shape still fits on both nodes, so the tie goes to node a
    assert FgdPolicy(typical).select(state, cpu_pod) == Placement(0, ())
    # tessera: on a, 1 CPU less strands 500 more milli-GPU (4000 - 5000 / 2 = 1500 vs 1000)
    chooser = TesseraPolicy(typical)
    assert chooser.cpu_per_milli == 2.0
    assert chooser.select(state, cpu_pod) == Placement(1, ())


def test_registry() -> None:
    expected = {"random", "bestfit", "packing", "clustering", "dotprod", "fgd", "spread", "tessera"}
    assert set(POLICIES) == expected
    with pytest.raises(ValueError, match="valid: random"):
        policy("nope")
    with pytest.raises(ValueError, match="typical pods"):
        policy("fgd")


def test_pod_request_validation() -> None:
    with pytest.raises(ValueError):
        PodRequest(1000, 1, num_gpu=2, gpu_milli=500)
    with pytest.raises(ValueError):
        PodRequest(1000, 1, num_gpu=1, gpu_milli=0)
    assert share(300).affinity == 0 and whole(4).affinity == 4 and CPU_POD.affinity == -1
