"""The tessera scheduler in the control plane: quotas, reclaim and priority preemption, end to end
through the store (no processes: node agents are played by their reports)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.scheduler.registry import make
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report


def loop(api: Api) -> SchedulingLoop:
    return SchedulingLoop(api.db, make("tessera"))


def state(api: Api, name: str) -> dict[str, Any]:
    return dict(api.call("GET", f"/api/v1/jobs/{name}").json()["status"])


def run(api: Api, token: str, name: str) -> None:
    report(api, token, api.call("GET", f"/api/v1/jobs/{name}").json(), state="RUNNING")


def test_priority_preemption_evicts_then_binds(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json={**job_body("low", gpus=1), "preemptible": True, "priority": "low"})
    scheduler = loop(api)
    scheduler.step()
    run(api, token, "low")
    api.call("POST", "/api/v1/jobs", json={**job_body("vip", gpus=1), "priority": "high"})
    scheduler.step()
    low = api.call("GET", "/api/v1/jobs/low").json()
    assert low["status"]["state"] == "PENDING" and low["status"]["pending_reason"]["code"] == "Preempted"
    # the evicted task is still stopping: its slice drains, and nothing else is evicted meanwhile
    assert len(low["draining"]) == 1 and low["allocations"] == []
    scheduler.step()
    assert (
        state(api, "vip")["state"] == "PENDING"
        and state(api, "vip")["pending_reason"]["code"] == "Preempting"
    )
    exited(api, token, low, exit_code=143)
    scheduler.step()
    assert state(api, "vip")["state"] == "SCHEDULED"
    scheduler.step()
    assert state(api, "low")["state"] == "PENDING"  # and it does not preempt back


def exited(api: Api, token: str, job: dict[str, Any], exit_code: int) -> None:
    """The agent reports that an evicted attempt's processes are gone (its slices drain away)."""
    body = {
        "reports": [
            {"task_id": a["task_id"], "attempt": a["attempt"], "state": "FAILED", "exit_code": exit_code}
            for a in job["draining"]
        ]
    }
    r = api.call("POST", f"/api/v1/nodes/{job['draining'][0]['node']}/reports", token=token, json=body)
    assert r.status_code == 200, r.text
    assert api.call("GET", f"/api/v1/jobs/{job['name']}").json()["draining"] == []


def test_non_preemptible_jobs_are_never_preempted_for_priority(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json={**job_body("steady", gpus=1), "priority": "low"})
    scheduler = loop(api)
    scheduler.step()
    run(api, token, "steady")
    api.call("POST", "/api/v1/jobs", json={**job_body("vip", gpus=1), "priority": "high"})
    scheduler.step()
    scheduler.step()
    assert state(api, "steady")["state"] == "RUNNING" and state(api, "vip")["state"] == "PENDING"


def test_quota_limits_and_reclaim(api: Api) -> None:
    token = node(api, gpus=2)
    for name, guaranteed, borrow in (("team-a", 1, 0), ("team-b", 1, 1)):
        r = api.call(
            "POST",
            "/api/v1/queues",
            json={"name": name, "guaranteed": {"gpu": guaranteed}, "borrowing_limit": {"gpu": borrow}},
        )
        assert r.status_code == 201, r.text
    api.call("PATCH", "/api/v1/projects/default", json={"queues": ["default", "team-a", "team-b"]})
    for i in range(3):
        api.call("POST", "/api/v1/jobs", json={**job_body(f"b{i}", gpus=1), "queue": "team-b"})
    scheduler = loop(api)
    scheduler.step()
    assert [state(api, f"b{i}")["state"] for i in range(3)] == ["SCHEDULED", "SCHEDULED", "PENDING"]
    assert state(api, "b2")["pending_reason"]["code"] == "QuotaExceeded"
    assert "team-b" in state(api, "b2")["pending_reason"]["message"]
    for i in range(2):
        run(api, token, f"b{i}")
    # team-a is owed one GPU that team-b borrowed: it reclaims a whole job of team-b
    api.call("POST", "/api/v1/jobs", json={**job_body("a0", gpus=1), "queue": "team-a"})
    scheduler.step()
    assert sorted(state(api, f"b{i}")["state"] for i in range(2)) == ["PENDING", "RUNNING"]
    victim = next(f"b{i}" for i in range(2) if state(api, f"b{i}")["state"] == "PENDING")
    exited(api, token, api.call("GET", f"/api/v1/jobs/{victim}").json(), exit_code=143)
    scheduler.step()
    assert state(api, "a0")["state"] == "SCHEDULED"


def test_reservation_backfill_and_an_overrun_backfill_preempted(api: Api) -> None:
    token = node(api, gpus=2)
    scheduler = loop(api)
    api.call("POST", "/api/v1/jobs", json={**job_body("a", gpus=1), "expected_runtime": "30m"})
    scheduler.step()
    run(api, token, "a")
    api.call("POST", "/api/v1/jobs", json=job_body("big", gpus=2))
    scheduler.step()
    big = state(api, "big")["pending_reason"]
    assert big["code"] == "Reserved" and "when 'a' ends" in big["message"], big
    api.call("POST", "/api/v1/jobs", json={**job_body("long", gpus=1), "expected_runtime": "2h"})
    api.call("POST", "/api/v1/jobs", json={**job_body("short", gpus=1), "expected_runtime": "10m"})
    scheduler.step()
    long = state(api, "long")["pending_reason"]
    assert long["code"] == "Unschedulable" and "would not end before they need it" in long["message"]
    short = api.call("GET", "/api/v1/jobs/short").json()
    assert short["status"]["state"] == "SCHEDULED" and short["status"]["backfill_until"] is not None
    events = api.call("GET", "/api/v1/events", params={"object_id": short["id"]}).json()
    assert any("as a backfill" in e["message"] for e in events), events
    run(api, token, "short")
    report(api, token, api.call("GET", "/api/v1/jobs/a").json(), state="SUCCEEDED", exit_code=0)
    # short runs past the time it was admitted for: the holder may now evict it
    until = datetime.fromisoformat(short["status"]["backfill_until"])
    scheduler.step(now=until + timedelta(minutes=1))
    evicted = state(api, "short")
    assert evicted["state"] == "PENDING" and evicted["pending_reason"]["code"] == "Preempted"
    assert "backfilled into room held for job 'big'" in evicted["pending_reason"]["message"]
    assert state(api, "big")["pending_reason"]["code"] == "Preempting"
