"""Data locality in placement: preferred scores nodes by cached share; required allows only full copies."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.model import UNSCHEDULABLE
from tests.scheduler.builders import make_job, make_node, snapshot

NODES = [make_node(f"n{i}").gpus(2).build() for i in (1, 2, 3)]


@pytest.mark.parametrize("placement", ["tessera", "firstfit", "packing"])
def test_required_data_keeps_the_job_on_nodes_holding_it(placement: str) -> None:
    job = dataclasses.replace(make_job("j").gpus(1).workers(2).build(), data_nodes=frozenset({"n3"}))
    snap = dataclasses.replace(snapshot(NODES, [job]), placement=placement)
    decisions = TesseraScheduler().cycle(snap)
    assert [p.node for b in decisions.binds for p in b.placements] == ["n3", "n3"]


def test_required_data_cached_nowhere_waits_and_says_why() -> None:
    job = dataclasses.replace(make_job("j").gpus(1).build(), data_nodes=frozenset())
    other = make_job("k").gpus(1).build()  # the same shape without the requirement is placed
    decisions = TesseraScheduler().cycle(snapshot(NODES, [job, other]))
    assert [b.job_id for b in decisions.binds] == [other.job_id]
    reason = decisions.pending[job.job_id]
    assert reason.code == UNSCHEDULABLE and "holding all of its required data: none yet" in reason.message


def test_preferred_data_goes_where_most_of_it_is() -> None:
    job = dataclasses.replace(make_job("j").gpus(1).build(), locality=(("n2", 0.4), ("n3", 0.9)))
    decisions = TesseraScheduler().cycle(snapshot(NODES, [job]))
    assert decisions.binds[0].placements[0].node == "n3"
