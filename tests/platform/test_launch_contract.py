"""The torch launch contract of a multi-task job, through the store: ranks, local ranks per node,
and rank 0's endpoint chosen at bind time (a port no other live job holds on that node)."""

from __future__ import annotations

import socket
import uuid

import pytest

from tessera.api.jobs import Job
from tessera.jobs import launch
from tessera.jobs.launch import MASTER_PORT_BASE, MASTER_PORT_SPAN, launches_for, master_port
from tessera.node.agent import _check_master_port
from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body
from tests.platform.test_execution import node


def ddp(api: Api, name: str, workers: int) -> None:
    body = job_body(name, gpus=1)
    body["groups"][0]["replicas"] = workers
    body["kind"] = "pytorchjob"
    r = api.call("POST", "/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text


def test_ranks_local_ranks_and_one_master_endpoint(api: Api) -> None:
    node(api, "n1", gpus=2)
    node(api, "n2", gpus=4)
    ddp(api, "a", 3)
    ddp(api, "b", 3)
    SchedulingLoop(api.db, placement="firstfit").step()
    a = Job.model_validate(api.call("GET", "/api/v1/jobs/a").json())
    b = Job.model_validate(api.call("GET", "/api/v1/jobs/b").json())
    assert a.status.master is not None and b.status.master is not None
    envs = [x.env for name in ("n1", "n2") for x in launches_for(a, name)]
    by_rank = {int(e["RANK"]): e for e in envs}
    assert sorted(by_rank) == [0, 1, 2] and {e["WORLD_SIZE"] for e in envs} == {"3"}
    # first fit: ranks 0 and 1 on n1, rank 2 on n2; LOCAL_RANK counts per node
    assert [
        (by_rank[r]["TESSERA_NODE"], by_rank[r]["LOCAL_RANK"], by_rank[r]["LOCAL_WORLD_SIZE"])
        for r in range(3)
    ] == [
        ("n1", "0", "2"),
        ("n1", "1", "2"),
        ("n2", "0", "1"),
    ]
    master = a.status.master
    assert master.node == "n1" and {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {
        (master.address, str(master.port))
    }
    assert MASTER_PORT_BASE <= master.port < MASTER_PORT_BASE + MASTER_PORT_SPAN
    assert b.status.master.node == "n2"  # b fits n2 only: its rank 0 is there


def test_two_live_jobs_never_share_a_master_port_on_a_node(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # three ports for three jobs: by hash alone they would likely collide; the bind must not let them
    monkeypatch.setattr(launch, "MASTER_PORT_SPAN", 3)
    node(api, "n1", gpus=8)
    for name in ("a", "b", "c"):
        ddp(api, name, 2)
    SchedulingLoop(api.db, placement="firstfit").step()
    masters = [Job.model_validate(api.call("GET", f"/api/v1/jobs/{n}").json()).status.master for n in "abc"]
    assert all(m is not None and m.node == "n1" for m in masters)
    assert {m.port for m in masters if m} == {MASTER_PORT_BASE, MASTER_PORT_BASE + 1, MASTER_PORT_BASE + 2}


def test_the_port_moves_past_taken_ones_and_differs_by_attempt() -> None:
    job = uuid.uuid4()
    first = master_port(job, 0)
    assert master_port(job, 0, {first}) != first
    assert (
        master_port(job, 0, {first}) == MASTER_PORT_BASE + (first - MASTER_PORT_BASE + 1) % MASTER_PORT_SPAN
    )
    assert master_port(job, 1) != first or master_port(job, 2) != first


def test_rank_0_does_not_start_on_a_port_another_program_holds() -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": str(port)}
        with pytest.raises(RuntimeError, match=f"MASTER_PORT {port} is in use"):
            _check_master_port(env)
        _check_master_port({**env, "RANK": "1"})  # only rank 0 listens
    _check_master_port(env)  # free again
