"""Binding and task reports on both databases, without processes: the control plane's half."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from tessera.platform.controllers.nodes import reconcile_nodes
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.store.types import utcnow
from tests.conftest import Api, job_body

GPU = {"uuid": "GPU-0", "index": 0, "model": "A100-80GB", "memory_mib": 81920, "simulated": True}


def node(api: Api, name: str = "n1", gpus: int = 1) -> str:
    token = api.user(f"agent-{name}", role=None, scopes=["node"])
    inventory = {
        "gpus": [{**GPU, "uuid": f"GPU-{name}-{i}", "index": i} for i in range(gpus)],
        "cpu": 8,
        "memory": "32Gi",
        "simulated": True,
    }
    r = api.call("POST", "/api/v1/nodes", token=token, json={"name": name, "inventory": inventory})
    assert r.status_code == 200, r.text
    return token


def report(api: Api, token: str, job: dict[str, Any], node_name: str = "n1", **fields: Any) -> int:
    body = {
        "reports": [{"task_id": t["id"], "attempt": job["status"]["attempt"], **fields} for t in job["tasks"]]
    }
    r = api.call("POST", f"/api/v1/nodes/{node_name}/reports", token=token, json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["applied"])


def test_slices_pack_without_overcommit(api: Api) -> None:
    node(api)
    for i in range(5):
        api.call("POST", "/api/v1/jobs", json=job_body(f"s{i}", gpu_memory="30Gi"))
    loop = SchedulingLoop(api.db)
    loop.step()
    loop.step()  # the second cycle sees the first's binds as running jobs to reserve behind
    jobs = {j["name"]: j for j in api.call("GET", "/api/v1/jobs").json()["items"]}
    bound = [n for n, j in jobs.items() if j["status"]["state"] == "SCHEDULED"]
    assert len(bound) == 2  # 2 x 30Gi fit an 80Gi GPU; a third would not
    waiting = [j["status"]["pending_reason"] for j in jobs.values() if j["status"]["state"] == "PENDING"]
    # 30Gi of an 80Gi GPU also takes 37.5% of its compute: either shortage may be the one named
    assert all(("30Gi" in r["message"] or "37.5%" in r["message"]) for r in waiting), waiting
    # the first in the queue holds a reservation for when a bound slice ends; the rest just wait
    assert sorted(r["code"] for r in waiting) == ["Reserved", "Unschedulable", "Unschedulable"], waiting
    allocs = [a for n in bound for a in api.call("GET", f"/api/v1/jobs/{n}").json()["allocations"]]
    assert sum(a["memory_mib"] for a in allocs) <= 81920
    assert sum(a["compute_pct"] for a in allocs) <= 100


def test_reports_drive_the_job_and_free_its_slice(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json=job_body("a", gpus=1))
    api.call("POST", "/api/v1/jobs", json=job_body("b", gpus=1))
    loop = SchedulingLoop(api.db)
    loop.step()
    a = api.call("GET", "/api/v1/jobs/a").json()
    assert a["status"]["state"] == "SCHEDULED" and a["tasks"][0]["node"] == "n1"
    assert api.call("GET", "/api/v1/jobs/b").json()["status"]["state"] == "PENDING"
    assert report(api, token, a, state="RUNNING", started_at=utcnow().isoformat()) == 1
    assert report(api, token, a, state="RUNNING") == 0  # idempotent
    assert api.call("GET", "/api/v1/jobs/a").json()["status"]["state"] == "RUNNING"
    report(api, token, a, state="SUCCEEDED", exit_code=0)
    done = api.call("GET", "/api/v1/jobs/a").json()
    assert done["status"]["state"] == "SUCCEEDED" and done["allocations"] == []
    loop.step()
    assert api.call("GET", "/api/v1/jobs/b").json()["status"]["state"] == "SCHEDULED"


def test_reports_from_the_wrong_node_or_attempt_are_ignored(api: Api) -> None:
    token = node(api)
    other = node(api, "n2")
    api.call("POST", "/api/v1/jobs", json={**job_body("r", gpus=1), "retry": {"max_retries": 1}})
    SchedulingLoop(api.db).step()
    job = api.call("GET", "/api/v1/jobs/r").json()
    placed = job["tasks"][0]["node"]
    wrong = other if placed == "n1" else token
    assert report(api, wrong, job, node_name="n2" if placed == "n1" else "n1", state="RUNNING") == 0
    mine = token if placed == "n1" else other
    report(api, mine, job, node_name=placed, state="FAILED", exit_code=2)
    retried = api.call("GET", "/api/v1/jobs/r").json()
    assert retried["status"]["state"] == "PENDING" and retried["status"]["attempt"] == 1
    # a late report about attempt 0 must not touch attempt 1
    assert report(api, mine, job, node_name=placed, state="SUCCEEDED", exit_code=0) == 0
    assert api.call("GET", "/api/v1/jobs/r").json()["status"]["state"] == "PENDING"


def test_start_error_fails_the_job(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json=job_body("x", gpus=1))
    SchedulingLoop(api.db).step()
    job = api.call("GET", "/api/v1/jobs/x").json()
    report(api, token, job, state="FAILED", exit_code=127, start_error="command not found: nope")
    failed = api.call("GET", "/api/v1/jobs/x").json()
    assert failed["status"]["reason"] == "StartError" and "command not found" in failed["status"]["message"]


def test_silent_node_goes_notready_but_not_right_after_a_control_plane_restart(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json=job_body("lost", gpus=1))
    SchedulingLoop(api.db).step()
    job = api.call("GET", "/api/v1/jobs/lost").json()
    report(api, token, job, state="RUNNING")
    later = utcnow() + timedelta(minutes=10)
    # a control plane that only just started has not had the chance to hear the node
    assert reconcile_nodes(api.db, timedelta(seconds=40), now=later, watching_since=later) == []
    assert reconcile_nodes(api.db, timedelta(seconds=40), now=later) == ["n1"]
    lost = api.call("GET", "/api/v1/jobs/lost").json()
    assert lost["status"]["state"] == "FAILED" and lost["status"]["reason"] == "NodeLost"
    # nothing binds to a NotReady node
    api.call("POST", "/api/v1/jobs", json=job_body("next", gpus=1))
    decisions = SchedulingLoop(api.db).step()
    assert decisions is not None and not decisions.binds
    assert api.call("GET", "/api/v1/jobs/next").json()["status"]["pending_reason"]["code"] == "NoReadyNodes"


def test_a_gang_smaller_than_the_job_binds_what_fits(api: Api) -> None:
    node(api, gpus=2)
    body = job_body("elastic-ish", gpus=1)
    body["groups"][0].update(replicas=3, min_available=2)
    api.call("POST", "/api/v1/jobs", json=body)
    SchedulingLoop(api.db).step()
    job = api.call("GET", "/api/v1/jobs/elastic-ish").json()
    assert job["status"]["state"] == "SCHEDULED"
    placed = [t for t in job["tasks"] if t["node"]]
    assert len(placed) == 2 and len(job["allocations"]) == 2  # the gang, not a partial one

    from tessera.api.jobs import Job
    from tessera.jobs.launch import launches_for

    launches = launches_for(Job.model_validate(job), "n1")
    assert sorted(int(x.env["RANK"]) for x in launches) == [0, 1]
    assert {x.env["WORLD_SIZE"] for x in launches} == {"2"}


def test_eviction_requeues_without_spending_retries(api: Api) -> None:
    from tessera.platform.services.execution import evict_job

    token = node(api)
    api.call("POST", "/api/v1/jobs", json={**job_body("victim", gpus=1), "preemptible": True})
    SchedulingLoop(api.db).step()
    job = api.call("GET", "/api/v1/jobs/victim").json()
    report(api, token, job, state="RUNNING")
    running = api.call("GET", "/api/v1/jobs/victim").json()
    job_id = uuid.UUID(running["id"])
    with api.db.write() as tx:
        assert evict_job(tx, job_id, running["version"] - 1, "Preempted", "stale") is False
    with api.db.write() as tx:
        assert evict_job(tx, job_id, running["version"], "Preempted", "for job vip") is True
    evicted = api.call("GET", "/api/v1/jobs/victim").json()
    assert evicted["status"]["state"] == "PENDING" and evicted["status"]["attempt"] == 1
    assert evicted["status"]["pending_reason"]["code"] == "Preempted" and evicted["allocations"] == []
    states = [(e["from_state"], e["to_state"]) for e in api.call("GET", "/api/v1/jobs/victim/events").json()]
    assert ("RUNNING", "PREEMPTED") in states and ("PREEMPTED", "PENDING") in states


def test_explain_shows_each_nodes_filters(api: Api) -> None:
    node(api, "n1")
    node(api, "n2", gpus=2)
    api.call("POST", "/api/v1/jobs", json=job_body("first", gpus=1))
    api.call("POST", "/api/v1/jobs", json=job_body("second", gpus=2))
    SchedulingLoop(api.db).step()
    body = job_body("third", gpus=1)
    body["groups"][0]["resources"]["cpu"] = 7.5
    api.call("POST", "/api/v1/jobs", json=body)
    SchedulingLoop(api.db).step()
    r = api.call("GET", "/api/v1/jobs/third/explain")
    assert r.status_code == 200, r.text
    result = r.json()
    # first in its queue: it holds room for when the jobs on a node end
    assert result["state"] == "PENDING" and result["pending_reason"]["code"] == "Reserved"
    verdicts = {n["node"]: n for n in result["nodes"]}
    # each node already runs a 1-cpu task, so 7.5 cpus fit neither; the first failing filter is named
    assert verdicts["n1"] == {
        "node": "n1",
        "ready": True,
        "tasks_that_fit": 0,
        "reasons": ["host cpu: needs 7.5, 7 free"],
    }
    assert verdicts["n2"]["reasons"] == ["host cpu: needs 7.5, 7 free"]
    done = api.call("GET", "/api/v1/jobs/first/explain").json()
    assert done["state"] == "SCHEDULED" and done["nodes"] == []


def test_a_node_token_acts_only_as_its_own_nodes(api: Api) -> None:
    mine = node(api, "n1")
    other = node(api, "n2")
    assert api.call("POST", "/api/v1/nodes/n1/heartbeat", token=mine).status_code == 200
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/api/v1/nodes/n1/heartbeat", None),
        ("GET", "/api/v1/nodes/n1/assignments", None),
        ("POST", "/api/v1/nodes/n1/reports", {"reports": []}),
        ("POST", "/api/v1/nodes", {"name": "n1", "inventory": {"gpus": [], "cpu": 1, "memory": "1Gi"}}),
    ]
    for method, path, body in calls:
        r = api.call(method, path, token=other, json=body)
        assert r.status_code == 403 and "another agent" in r.json()["detail"], (path, r.text)
    assert api.call("POST", "/api/v1/nodes/n1/heartbeat").status_code == 200  # admins may


def test_an_ended_attempts_slice_drains_until_its_process_exits(api: Api) -> None:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json=job_body("old", gpus=1))
    api.call("POST", "/api/v1/jobs", json=job_body("next", gpus=1))
    loop = SchedulingLoop(api.db)
    loop.step()
    old = api.call("GET", "/api/v1/jobs/old").json()
    report(api, token, old, state="RUNNING")
    api.call("POST", "/api/v1/jobs/old/cancel")
    cancelled = api.call("GET", "/api/v1/jobs/old").json()
    assert cancelled["allocations"] == [] and len(cancelled["draining"]) == 1
    loop.step()
    assert api.call("GET", "/api/v1/jobs/next").json()["status"]["state"] == "PENDING"  # GPU still held
    report(api, token, old, state="FAILED", exit_code=143)  # the agent saw the process go
    assert api.call("GET", "/api/v1/jobs/old").json()["draining"] == []
    loop.step()
    assert api.call("GET", "/api/v1/jobs/next").json()["status"]["state"] == "SCHEDULED"
