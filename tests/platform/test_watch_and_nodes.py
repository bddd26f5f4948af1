"""The watch endpoint, node registration, submit-time feasibility and the pending controller."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tessera.platform.controllers.pending import reconcile_pending
from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body

A100 = {"uuid": "GPU-a", "index": 0, "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "simulated": True}


def watch(api: Api, since: int, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    r = api.call("GET", "/api/v1/watch", token=token, params={"since": since, "timeout": 0.5, **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def test_watch_streams_changes_after_a_revision(api: Api) -> None:
    listed = api.call("GET", "/api/v1/jobs").json()
    since = listed["revision"]
    job = api.call("POST", "/api/v1/jobs", json=job_body("w")).json()
    api.call("POST", "/api/v1/jobs/w/cancel")
    lines = watch(api, since, kind="job")
    changes = [x for x in lines if x["type"] == "CHANGE"]
    assert [(c["kind"], c["object"]["status"]["state"]) for c in changes] == [
        ("job", "PENDING"),
        ("job", "CANCELLED"),
    ]
    assert all(c["id"] == job["id"] for c in changes)
    assert changes[0]["revision"] < changes[1]["revision"]
    bookmark = lines[-1]
    assert bookmark["type"] == "BOOKMARK" and bookmark["revision"] >= changes[-1]["revision"]
    # resuming from the bookmark yields nothing new
    assert [x for x in watch(api, bookmark["revision"], kind="job") if x["type"] == "CHANGE"] == []


def test_watch_hides_other_projects_and_credentials(api: Api) -> None:
    api.call("POST", "/api/v1/projects", json={"name": "other"})
    member = api.user("wendy")
    api.call("POST", "/api/v1/jobs", json={**job_body("hidden"), "project": "other"})
    api.call("POST", "/api/v1/jobs", json=job_body("shown"))
    kinds = {
        (c["kind"], (c["object"] or {}).get("name") or (c["object"] or {}).get("object_name"))
        for c in watch(api, 0, token=member)
        if c["type"] == "CHANGE"
    }
    assert ("job", "shown") in kinds and ("job", "hidden") not in kinds
    assert not any(kind in {"token", "user"} for kind, _ in kinds)


def test_watch_after_compaction_is_gone(api: Api) -> None:
    from tessera.platform.store.feed import compact

    for i in range(3):
        api.call("POST", "/api/v1/jobs", json=job_body(f"c{i}"))
    head = api.call("GET", "/api/v1/jobs").json()["revision"]
    with api.db.write() as tx:
        compact(tx.session, head - 1)
    r = api.call("GET", "/api/v1/watch", params={"since": 1, "timeout": 0.5})
    assert r.status_code == 410 and "list again" in r.json()["detail"]


def test_feasibility_once_a_node_has_joined(api: Api) -> None:
    node = api.user("agent", role=None, scopes=["node"])
    before = api.call("POST", "/api/v1/jobs", json=job_body("huge", gpu_memory="200Gi"))
    assert before.status_code == 201  # no node yet: nothing to judge against
    reg = {"name": "node-a", "inventory": {"gpus": [A100], "cpu": 16, "memory": "64Gi", "simulated": True}}
    assert api.call("POST", "/api/v1/nodes", json=reg, token=node).status_code == 200
    r = api.call("POST", "/api/v1/jobs", json=job_body("huge2", gpu_memory="200Gi"))
    assert r.status_code == 422
    assert "exceeds the largest GPU (80Gi)" in r.json()["errors"][0]["message"]
    assert r.json()["errors"][0]["field"] == "groups.0.resources"
    r = api.call("POST", "/api/v1/jobs", json=job_body("t4", gpus=1, gpu_models=["T4"]))
    assert r.status_code == 422 and "model" in r.json()["detail"]
    r = api.call("POST", "/api/v1/jobs", json=job_body("two", gpus=2))
    assert r.status_code == 422 and "no node has more than 1" in r.json()["detail"]
    body = job_body("gang", gpu_memory="40Gi")
    body["groups"][0]["replicas"] = 8  # larger than the cluster: accepted, waits
    assert api.call("POST", "/api/v1/jobs", json=body).status_code == 201
    ok = api.call("POST", "/api/v1/jobs", json=job_body("fits", gpu_memory="40Gi"))
    assert ok.json()["status"]["pending_reason"]["code"] == "WaitingForScheduler"

    # the scheduler gives every pending job its reason: one that never fits says so,
    # the gang larger than the cluster waits and reserves nothing, the one that fits is bound
    assert api.call("GET", "/api/v1/jobs/huge").json()["status"]["pending_reason"]["code"] == "NoNodes"
    loop = SchedulingLoop(api.db)
    loop.step()
    jobs = {j["name"]: j["status"] for j in api.call("GET", "/api/v1/jobs").json()["items"]}
    assert jobs["fits"]["state"] == "SCHEDULED"
    assert jobs["gang"]["pending_reason"]["code"] == "GangTooLarge"
    assert jobs["huge"]["pending_reason"]["code"] in ("GangTooLarge", "Unschedulable")
    revision = api.db.current_revision()
    loop.step()
    loop.step()
    assert api.db.current_revision() == revision  # nothing changed: no writes at all


def test_the_loops_own_reason_writes_do_not_wake_it(api: Api) -> None:
    api.call("POST", "/api/v1/nodes", token=api.user("agent", role=None, scopes=["node"]), json={
        "name": "n1", "inventory": {"gpus": [A100], "cpu": 8, "memory": "32Gi", "simulated": True},
    })  # fmt: skip
    for name in ("a", "b"):  # gangs larger than the cluster: accepted, they wait
        body = job_body(name, gpus=1)
        body["groups"][0]["replicas"] = 2
        assert api.call("POST", "/api/v1/jobs", json=body).status_code == 201
    loop = SchedulingLoop(api.db)
    assert loop.step() is not None  # a cycle: both wait, and it writes their reasons
    reasons = {
        j["name"]: j["status"]["pending_reason"]["code"]
        for j in api.call("GET", "/api/v1/jobs").json()["items"]
    }
    assert reasons == {"a": "GangTooLarge", "b": "GangTooLarge"}, reasons
    assert loop.step() is None  # only its own reasons came back: no second cycle
    assert api.call("POST", "/api/v1/jobs", json=job_body("c")).status_code == 201
    assert loop.step() is not None  # a new job does wake it


def test_a_long_cycle_is_followed_by_rest_in_proportion(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.platform.controllers import scheduling
    from tessera.scheduler.model import Decisions, Snapshot

    clock = {"now": 1000.0}

    class Clock:  # the loop's perf_counter: each cycle takes 1 s of it
        @staticmethod
        def perf_counter() -> float:
            return clock["now"]

    class Slow:
        name = "slow"

        def cycle(self, snapshot: Snapshot) -> Decisions:
            clock["now"] += 1.0
            return Decisions(binds=(), pending={})

    monkeypatch.setattr(scheduling, "time", Clock)
    loop = SchedulingLoop(api.db, Slow(), max_busy=0.25)  # 1 s of cycle, then 3 s of rest
    assert loop.step() is not None
    for name, after, runs in (("a", 1.0, False), ("b", 1.9, False), ("c", 3.1, True), ("d", 1.0, False)):
        assert api.call("POST", "/api/v1/jobs", json=job_body(name)).status_code == 201
        clock["now"] += after
        assert (loop.step() is not None) == runs, (name, clock["now"])
    clock["now"] += 2.1  # rested: what changed meanwhile (job d) is scheduled now
    assert loop.step() is not None


def test_deadline_fails_a_pending_job(api: Api) -> None:
    from datetime import timedelta

    from tessera.platform.store.types import utcnow

    api.call("POST", "/api/v1/jobs", json={**job_body("late"), "deadline": "30m"})
    api.call("POST", "/api/v1/jobs", json={**job_body("ontime"), "deadline": "2h"})
    assert reconcile_pending(api.db, now=utcnow() + timedelta(hours=1)) == 1
    late = api.call("GET", "/api/v1/jobs/late").json()
    assert late["status"]["state"] == "FAILED" and late["status"]["reason"] == "DeadlineExceeded"
    assert late["spec"]["deadline"] == "30m"
    assert api.call("GET", "/api/v1/jobs/ontime").json()["status"]["state"] == "PENDING"
    bad = api.call("POST", "/api/v1/jobs", json={**job_body("bad"), "deadline": "soon"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "deadline"
