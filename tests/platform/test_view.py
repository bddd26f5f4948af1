"""The scheduler's view, kept change by change, always equals a full read of the store."""

from __future__ import annotations

from datetime import timedelta

from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.controllers.view import load_view
from tessera.platform.store.types import utcnow
from tessera.scheduler.model import Snapshot
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report
from tests.platform.test_policy import exited


def normal(snap: Snapshot) -> Snapshot:
    return Snapshot(
        nodes=snap.nodes,
        pending=tuple(sorted(snap.pending, key=lambda j: j.job_id)),
        now=snap.now,
        running=tuple(sorted(snap.running, key=lambda j: j.job_id)),
        queues=snap.queues,
    )


def same_as_full_read(loop: SchedulingLoop) -> Snapshot:
    loop.sync()
    now = utcnow()
    incremental = normal(loop.view.snapshot(now))
    assert incremental == normal(load_view(loop.db).snapshot(now))
    return incremental


def test_incremental_view_matches_a_full_read_through_a_jobs_life(api: Api) -> None:
    token = node(api, gpus=2)
    loop = SchedulingLoop(api.db)
    queue = {"name": "research", "guaranteed": {"gpu": 1}}
    assert api.call("POST", "/api/v1/queues", json=queue).status_code == 201
    api.call("POST", "/api/v1/jobs", json={**job_body("low", gpus=1), "preemptible": True, "priority": "low"})
    api.call("POST", "/api/v1/jobs", json=job_body("half", gpus=0.5))
    assert len(same_as_full_read(loop).pending) == 2
    loop.step()
    snap = same_as_full_read(loop)
    assert len(snap.running) == 2
    assert sorted(g.used_compute_pct for g in snap.nodes[0].gpus) == [50.0, 100.0]
    for name in ("low", "half"):
        report(api, token, api.call("GET", f"/api/v1/jobs/{name}").json(), state="RUNNING")
    same_as_full_read(loop)
    api.call("POST", "/api/v1/jobs", json={**job_body("vip", gpus=1), "priority": "high"})
    loop.step()  # evicts low: its slice drains until the process exits
    snap = same_as_full_read(loop)
    assert sorted(g.used_compute_pct for g in snap.nodes[0].gpus) == [50.0, 100.0]
    exited(api, token, api.call("GET", "/api/v1/jobs/low").json(), exit_code=143)
    snap = same_as_full_read(loop)
    assert sorted(g.used_compute_pct for g in snap.nodes[0].gpus) == [0.0, 50.0]
    now = utcnow()
    preempting = [j for j in loop.view.snapshot(now).pending if j.name == "vip"]
    assert preempting[0].preempting  # its claim holds for a while, then lapses
    assert len(loop.view.claims) == 1 and loop.view.claims[0] > now  # the loop wakes when it lapses
    assert not [j for j in loop.view.snapshot(utcnow() + timedelta(minutes=5)).pending if j.preempting]
    assert loop.view.claims == []
    assert api.call("POST", "/api/v1/jobs/half/cancel").status_code == 200
    same_as_full_read(loop)
    assert api.call("DELETE", "/api/v1/nodes/n1").status_code in (200, 204)
    assert same_as_full_read(loop).nodes == ()
