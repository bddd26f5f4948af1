"""The cycle places through the same policies the trace simulator replays (scoring.py).

Replaying a slice of a real openb trace pod by pod through the live workspace (nodes and GPUs as
the control plane sees them, requests as ``Resources``) must choose exactly the nodes and GPUs the
simulator's direct replay chooses, for every policy: the workspace's mirror and request conversion
add nothing of their own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tessera.api.resources import Resources
from tessera.scheduler.model import GpuState, NodeState, TaskRequest
from tessera.scheduler.placement import Ranking, Workspace
from tessera.scheduler.policies import POLICIES, policy
from tessera.scheduler.policies.fgd import typical_mix
from tessera.scheduler.scoring import Scorer
from tessera.sim.method import arrival_order, cluster, requests, typical_pods
from tessera.sim.traces import read_nodes, read_pods

DATA = Path(__file__).resolve().parents[1] / "data" / "openb"
GPU_MIB = 16000  # openb gives no GPU memory; shares are what count (a multiple of 1000: exact)


def _slice(tmp_path: Path, nodes: int, pods: int) -> tuple[Path, Path]:
    node_file, pod_file = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    lines = (DATA / "openb_node_list_gpu_node.csv").read_text().splitlines(True)
    node_file.write_text("".join(lines[: nodes + 1]))
    lines = (DATA / "openb_pod_list_default_head2000.csv").read_text().splitlines(True)
    pod_file.write_text("".join(lines[: pods + 1]))
    return node_file, pod_file


@pytest.mark.parametrize("name", [p for p in POLICIES if p != "random"])
def test_live_placement_matches_the_simulator(tmp_path: Path, name: str) -> None:
    node_file, pod_file = _slice(tmp_path, nodes=60, pods=600)
    node_table, pod_table = read_nodes(node_file), read_pods(pod_file)
    state = cluster(node_table)
    order = arrival_order(pod_table, state.capacity_milli, seed=42)
    typical = typical_pods(pod_table)
    direct = policy(name, typical=typical)
    pods = requests(pod_table)

    nodes = [
        NodeState(
            name=node_table.names[i],
            ready=True,
            cpu=int(node_table.cpu_milli[i]) / 1000,
            memory_mib=int(node_table.memory_mib[i]),
            gpus=tuple(
                GpuState(f"GPU-{node_table.names[i]}-{g}", g, node_table.models[i], GPU_MIB)
                for g in range(int(node_table.gpus[i]))
            ),
        )
        for i in range(len(node_table))
    ]
    ws = Workspace(nodes, empty=False, indexed=True)
    ws.scorer = Scorer(ws.ready_nodes)
    ws.scorer.learn([])  # keeps its default; the mix is set to the simulator's below
    ws.scorer._typical = list(typical)
    rank = Ranking(name)
    index = {n.name: i for i, n in enumerate(ws.ready_nodes)}
    compared = 0
    for k in order.tolist()[:400]:
        pod = pods[k]
        expected = direct.select(state, pod)
        gpus: float | None = None
        if pod.num_gpu:
            gpus = pod.num_gpu if pod.gpu_milli == 1000 else pod.gpu_milli / 1000
        res = Resources(
            gpus=gpus, cpu=pod.cpu_milli / 1000, memory=pod.memory_mib, gpu_models=list(pod.models)
        )
        placed = ws.place_task(TaskRequest(uuid.uuid4(), "worker", 0, res), {}, rank)
        if expected is None:
            assert placed is None, (k, pod)
            continue
        direct.apply(state, pod, expected)
        assert placed is not None, (k, pod)
        assert index[placed[0].node] == expected.node, (k, pod)
        if pod.num_gpu:
            assert tuple(sorted(p.gpu_index or 0 for p in placed)) == tuple(sorted(expected.gpus)), (k, pod)
        compared += 1
    assert compared > 300


def test_typical_mix_covers_95_percent_most_frequent_first() -> None:
    a, b, c = (1000, 500, 1, ()), (2000, 1000, 1, ()), (4000, 0, 0, ())
    mix = typical_mix([(a, 10)] * 70 + [(b, 20)] * 26 + [(c, 30)] * 4)
    assert [(t.cpu_milli, t.gpu_milli, t.count) for t in mix] == [(1000, 500, 70), (2000, 1000, 26)]
    assert mix[0].memory_mib == 10
