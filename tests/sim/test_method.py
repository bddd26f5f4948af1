"""The paper's method: seeded order, tuning to 130% of cluster milli-GPU, FGD's typical pods."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tessera.scheduler.policies import TypicalPod
from tessera.sim.method import arrival_order, typical_pods
from tessera.sim.traces import PodTable, read_pods


def pod_table(tmp_path: Path, rows: list[tuple[str, int, int, int, int, str]]) -> PodTable:
    """rows: (name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec)."""
    lines = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"]
    lines += [",".join(map(str, row)) for row in rows]
    path = tmp_path / "pods.csv"
    path.write_text("\n".join(lines) + "\n")
    return read_pods(path)


@pytest.fixture
def small(tmp_path: Path) -> PodTable:
    # 20 pods, demand 14 x 500 + 4 x 1000 + 2 CPU-only = 11,000 milli-GPU; names out of order
    rows = [(f"p{(i * 7) % 20:02d}", 1000, 10, 1, 500, "") for i in range(14)]
    rows += [(f"p{(i * 7) % 20:02d}", 2000, 10, 1, 1000, "") for i in range(14, 18)]
    rows += [(f"p{(i * 7) % 20:02d}", 500, 10, 0, 0, "") for i in range(18, 20)]
    return pod_table(tmp_path, rows)


def demand(pods: PodTable, order: np.ndarray) -> int:
    return int((pods.num_gpu * pods.gpu_milli)[order].sum())


def test_order_is_deterministic_per_seed(small: PodTable) -> None:
    a = arrival_order(small, 10_000, seed=42)
    b = arrival_order(small, 10_000, seed=42)
    c = arrival_order(small, 10_000, seed=43)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_order_does_not_depend_on_file_order(tmp_path: Path, small: PodTable) -> None:
    rows = [
        (small.names[i], int(small.cpu_milli[i]), 10, int(small.num_gpu[i]), int(small.gpu_milli[i]), "")
        for i in reversed(range(len(small)))
    ]
    flipped = pod_table(tmp_path, rows)
    names_a = [small.names[i] for i in arrival_order(small, 10_000, seed=7)]
    names_b = [flipped.names[i] for i in arrival_order(flipped, 10_000, seed=7)]
    assert names_a == names_b  # sorted by name before the seeded shuffle


def test_tuning_up_samples_until_the_next_pod_would_pass_130_percent(small: PodTable) -> None:
    capacity = 10_000  # target 13,000 > 11,000 asked
    order = arrival_order(small, capacity, seed=1)
    head = order[: len(small)]
    assert sorted(head.tolist()) == list(range(len(small)))  # every pod once, shuffled
    assert len(order) > len(small)
    total = demand(small, order)
    assert total <= 1.3 * capacity
    assert total > 1.3 * capacity - 1000  # stopped only when the next sampled pod would pass


def test_tuning_down_removes_random_pods_until_within_130_percent(small: PodTable) -> None:
    capacity = 5_000  # target 6,500 < 11,000 asked
    order = arrival_order(small, capacity, seed=3)
    assert len(set(order.tolist())) == len(order)  # no repeats: only removal
    total = demand(small, order)
    assert total <= 6_500
    assert total > 6_500 - 1000  # removal stops as soon as it no longer passes
    assert arrival_order(small, capacity, seed=3).tolist() == order.tolist()


def test_exact_demand_is_left_alone(small: PodTable) -> None:
    order = arrival_order(small, 11_000, seed=5, ratio=1.0)
    assert sorted(order.tolist()) == list(range(len(small)))


def test_typical_pods_cover_95_percent_most_frequent_first(tmp_path: Path) -> None:
    rows = [(f"a{i:02d}", 4000, 1, 1, 500, "") for i in range(10)]
    rows += [(f"b{i:02d}", 2000, 1, 0, 0, "") for i in range(6)]
    rows += [(f"c{i:02d}", 8000, 1, 2, 1000, "T4|G2") for i in range(3)]
    rows += [(f"d{i:02d}", 1000, 1, 1, 1000, "") for i in range(1)]
    typical = typical_pods(pod_table(tmp_path, rows))
    # 10 + 6 + 3 = 19 of 20 pods = 95%: the single-pod shape is left out
    assert typical == [
        TypicalPod(4000, 500, 1, (), 10, 1.0),
        TypicalPod(2000, 0, 0, (), 6, 1.0),
        TypicalPod(8000, 1000, 2, ("T4", "G2"), 3, 1.0),
    ]
    covered = sum(t.count for t in typical)
    assert [t.count / covered for t in typical] == pytest.approx([10 / 19, 6 / 19, 3 / 19])


def test_typical_pod_ties_go_to_the_larger_shape(tmp_path: Path) -> None:
    rows = [("x0", 1000, 5, 1, 200, ""), ("x1", 3000, 7, 1, 200, ""), ("x2", 2000, 9, 1, 200, "")]
    typical = typical_pods(pod_table(tmp_path, rows), coverage=0.5)
    assert [(t.cpu_milli, t.count) for t in typical] == [(3000, 1), (2000, 1)]
    assert typical[0].memory_mib == 7.0


def test_typical_pods_ignore_gpu_spec_of_cpu_pods(tmp_path: Path) -> None:
    rows = [("x0", 1000, 5, 0, 0, "T4"), ("x1", 1000, 5, 0, 0, "")]
    typical = typical_pods(pod_table(tmp_path, rows), coverage=1.0)
    assert typical == [TypicalPod(1000, 0, 0, (), 2, 5.0)]
    assert Counter(t.models for t in typical) == Counter({(): 1})
