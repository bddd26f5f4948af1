"""`tessera explain`'s per-node verdicts use the scheduler's fit rules and name the failing filter."""

from __future__ import annotations

import pytest

from tessera.scheduler.explain import explain
from tests.scheduler.builders import JobBuilder, make_job, make_node, snapshot


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (make_job("j").slice("60Gi"), "GPU 0: needs 60Gi / 75%, 40Gi / 50% free"),
        (make_job("j").gpus(1), "whole GPUs: needs 1 idle, 0 idle"),
        (make_job("j").gpus(1).models("H100"), "GPU model: wants ['H100'], node has ['A100-80GB']"),
        (make_job("j").cpu(64), "host cpu: needs 64, 32 free"),
    ],
)
def test_the_failing_filter_is_named(job: JobBuilder, reason: str) -> None:
    busy = make_node("busy").gpus(1).gpu_used(0, "40Gi", 50).cpu(32).build()
    [verdict] = explain(snapshot([busy], []), job.build())
    assert (verdict.tasks_that_fit, verdict.reasons) == (0, (reason,))


def test_counts_tasks_in_turn_and_orders_nodes() -> None:
    roomy = make_node("roomy").gpus(2).build()
    down = make_node("down").gpus(8).not_ready().build()
    job = make_job("j").gpus(1).workers(3).build()
    verdicts = explain(snapshot([down, roomy], []), job)
    assert [(v.node, v.tasks_that_fit) for v in verdicts] == [("roomy", 2), ("down", 0)]
    assert verdicts[0].reasons == ("worker-2: whole GPUs: needs 1 idle, 0 idle",)
    assert verdicts[1].reasons == ("node is NotReady",)
