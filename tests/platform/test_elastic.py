"""Elastic jobs in the control plane, without processes: submit checks, grants, shrinks, Ray's events."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report


def elastic_body(name: str, lo: int, hi: int, **elastic: Any) -> dict[str, Any]:
    group = {
        "name": "worker",
        "replicas": hi,
        "min_available": lo,
        "command": ["python", "-m", "tessera.jobs.elastic"],
        "resources": {"gpus": 1},
    }
    spec = {"min_workers": lo, "max_workers": hi, "entry": "examples/elastic_train.py", **elastic}
    return {"name": name, "kind": "elastic", "groups": [group], "elastic": spec}


def get(api: Api, name: str) -> dict[str, Any]:
    r = api.call("GET", f"/api/v1/jobs/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def events(api: Api, name: str) -> list[dict[str, Any]]:
    job = get(api, name)
    r = api.call("GET", "/api/v1/events", params={"object_id": job["id"], "limit": 500})
    assert r.status_code == 200, r.text
    return list(r.json())


def train_event(api: Api, token: str, job: dict[str, Any], reason: str, **fields: Any) -> None:
    body = {"events": [{"reason": reason, "job_id": job["id"], "message": "", **fields}]}
    r = api.call("POST", "/api/v1/nodes/n1/events", token=token, json=body)
    assert r.status_code == 200, r.text


def bound(job: dict[str, Any]) -> list[dict[str, Any]]:
    ids = {a["task_id"] for a in job["allocations"]}
    return [t for t in job["tasks"] if t["id"] in ids]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (elastic_body("a", 3, 2), "elastic", "min_workers (3) cannot exceed max_workers (2)"),
        (elastic_body("b", 1, 2, entry="not an entry"), "elastic.entry", "package.module:function"),
        (
            {**elastic_body("c", 1, 2), "elastic": {"min_workers": 1, "max_workers": 2}},
            "elastic.entry",
            "field required",
        ),
        ({**elastic_body("d", 1, 2), "elastic": None}, "", "kind elastic needs the elastic section"),
        ({**elastic_body("e", 1, 2), "kind": "train"}, "", "only kind elastic may have one"),
    ],
)
def test_bad_elastic_specs_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str, words: str
) -> None:
    r = api.call("POST", "/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    text = str(problem)
    assert words in text, text
    if field:
        assert field in text, text
    assert api.call("GET", "/api/v1/jobs").json()["items"] == []  # nothing stored


def test_min_beyond_the_cluster_is_refused_and_max_beyond_it_is_not(api: Api) -> None:
    node(api, gpus=2)
    r = api.call("POST", "/api/v1/jobs", json=elastic_body("big", 3, 4))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "elastic.min_workers", r.json()
    assert "whole cluster could ever hold" in r.json()["detail"], r.json()
    ok = api.call("POST", "/api/v1/jobs", json=elastic_body("grows", 1, 16))
    assert ok.status_code == 201, ok.text
    storage = ok.json()["spec"]["elastic"]["storage"]
    assert storage.endswith(f"/default/grows-{ok.json()['id'][:8]}"), storage  # one place per job


def test_grow_shrink_recover_and_finish(api: Api) -> None:
    token = node(api, gpus=2)
    api.call("POST", "/api/v1/jobs", json=job_body("blocker", gpus=1))
    loop = SchedulingLoop(api.db)
    loop.step()
    api.call("POST", "/api/v1/jobs", json=elastic_body("el", 1, 2))
    loop.step()
    job = get(api, "el")
    assert job["status"]["state"] == "SCHEDULED" and len(bound(job)) == 1
    master = job["status"]["master"]
    assert master is not None and len(master["token"]) >= 32  # the Ray head's address and token
    report(api, token, {**job, "tasks": bound(job)}, state="RUNNING")
    train_event(api, token, job, "TrainingRunning", workers=1)
    assert get(api, "el")["status"] | {"workers": 1} == get(api, "el")["status"]

    # the blocker ends: the free GPU is granted to the elastic job
    report(api, token, get(api, "blocker"), state="SUCCEEDED", exit_code=0)
    loop.step()
    job = get(api, "el")
    assert job["status"]["state"] == "RESIZING" and len(bound(job)) == 2, job["status"]
    assert "growing 1 -> 2 workers" in job["status"]["message"]
    new = [t for t in bound(job) if t["state"] == "PENDING"]
    report(api, token, {**job, "tasks": new}, state="RUNNING")
    train_event(api, token, job, "TrainingRunning", workers=2)
    job = get(api, "el")
    assert job["status"]["state"] == "RUNNING" and job["status"]["workers"] == 2
    assert any(
        e["reason"] == "Resized" and e["message"] == "Resized 1 -> 2 workers" for e in events(api, "el")
    )
    loop.step()
    assert get(api, "el")["status"]["state"] == "RUNNING"  # at max: nothing more to grant

    # another job needs a GPU: the extra worker is given back, nobody is evicted
    api.call("POST", "/api/v1/jobs", json=job_body("urgent", gpus=1))
    loop.step()
    job, urgent = get(api, "el"), get(api, "urgent")
    assert job["status"]["state"] == "RESIZING" and len(bound(job)) == 1
    assert urgent["status"]["pending_reason"]["code"] == "Preempting"
    taken = next(t for t in job["tasks"] if t["id"] == new[0]["id"])
    assert taken["state"] == "CANCELLED" and "slice reclaimed" in taken["message"]
    assert [d["task_id"] for d in job["draining"]] == [taken["id"]]  # counts until its process exits
    assert len(job["tasks"]) == 3  # a fresh task took its place, for a later grant
    loop.step()
    assert get(api, "urgent")["status"]["state"] == "PENDING"  # the slice is not free yet
    report(api, token, {**job, "tasks": [taken]}, state="FAILED", exit_code=0)
    loop.step()
    assert get(api, "urgent")["status"]["state"] == "SCHEDULED"
    # Ray Train saw a drained (preempted) node: not a failure of the job's
    train_event(api, token, job, "TrainingFailed", source="preemption", message="node drained")
    train_event(api, token, job, "TrainingRunning", workers=1)
    job = get(api, "el")
    assert job["status"]["state"] == "RUNNING" and job["status"]["failures"] == 0
    assert any(e["message"] == "Resized 2 -> 1 workers" for e in events(api, "el"))

    # a real worker failure: RECOVERING until Ray Train runs again, and counted
    train_event(api, token, job, "TrainingFailed", source="controller", message="start timed out")
    assert get(api, "el")["status"]["state"] == "RUNNING"
    train_event(api, token, job, "TrainingFailed", source="worker", message="worker died")
    job = get(api, "el")
    assert job["status"]["state"] == "RECOVERING" and job["status"]["failures"] == 1
    train_event(api, token, job, "TrainingRunning", workers=1)
    job = get(api, "el")
    assert job["status"]["state"] == "RUNNING" and "resumed with 1 workers" in job["status"]["message"]

    # the driver (rank 0) finishes: the job is done
    head = min(bound(job), key=lambda t: t["index"])
    report(api, token, {**job, "tasks": [head]}, state="SUCCEEDED", exit_code=0)
    assert get(api, "el")["status"]["state"] == "SUCCEEDED"


def test_a_worker_that_exits_is_replaced_and_the_job_goes_on(api: Api) -> None:
    token = node(api, gpus=2)
    api.call("POST", "/api/v1/jobs", json=elastic_body("el", 1, 2))
    loop = SchedulingLoop(api.db)
    loop.step()
    job = get(api, "el")
    assert len(bound(job)) == 2  # both fit at once: bound together
    report(api, token, job, state="RUNNING")
    worker = max(bound(job), key=lambda t: t["index"])
    report(api, token, {**job, "tasks": [worker]}, state="FAILED", exit_code=137)
    job = get(api, "el")
    assert job["status"]["state"] == "RUNNING" and len(bound(job)) == 1
    assert (
        "exited with code 137; the job goes on"
        in next(t for t in job["tasks"] if t["id"] == worker["id"])["message"]
    )
    loop.step()  # the freed GPU goes to the fresh task
    job = get(api, "el")
    assert job["status"]["state"] == "RESIZING" and len(bound(job)) == 2
    assert max(t["index"] for t in bound(job)) == 2


def test_worker_nodes_that_keep_dying_spend_the_failure_budget(api: Api) -> None:
    token = node(api, gpus=2)
    api.call("POST", "/api/v1/jobs", json=elastic_body("el", 1, 2, max_failures=1))
    loop = SchedulingLoop(api.db)
    loop.step()
    for round_ in range(2):
        job = get(api, "el")
        report(api, token, {**job, "tasks": bound(job)}, state="RUNNING")
        worker = max(bound(job), key=lambda t: t["index"])
        report(api, token, {**job, "tasks": [worker]}, state="FAILED", exit_code=1)
        if round_ == 0:
            assert get(api, "el")["status"]["state"] == "RUNNING"
            loop.step()  # a fresh task is granted the freed slice
    failed = get(api, "el")
    assert failed["status"]["state"] == "FAILED", failed["status"]
    assert "2 worker node(s) exited on their own, more than max_failures (1)" in failed["status"]["message"]


def test_default_checkpoints_need_a_shared_place_when_nodes_span_machines(api: Api) -> None:
    inventory = {"gpus": [], "cpu": 8, "memory": "32Gi", "simulated": True}
    for name, url in (("near", "http://127.0.0.1:9000"), ("far", "http://10.1.2.3:9000")):
        token = api.user(f"agent-{name}", role=None, scopes=["node"])
        registration = {"name": name, "inventory": inventory, "agent_url": url}
        r = api.call("POST", "/api/v1/nodes", token=token, json=registration)
        assert r.status_code == 200, r.text
    body: dict[str, Any] = elastic_body("el", 1, 2)
    body["groups"][0]["resources"] = {"cpu": 1}
    r = api.call("POST", "/api/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "elastic.storage", r.text
    body["elastic"]["storage"] = "s3://bucket/ckpt"
    assert api.call("POST", "/api/v1/jobs", json=body).status_code == 201


def test_an_extra_taken_back_before_it_started_frees_its_slice_at_once(api: Api) -> None:
    token = node(api, gpus=2)
    api.call("POST", "/api/v1/jobs", json=job_body("blocker", gpus=1))
    loop = SchedulingLoop(api.db)
    loop.step()
    api.call("POST", "/api/v1/jobs", json=elastic_body("el", 1, 2))
    loop.step()
    job = get(api, "el")
    report(api, token, {**job, "tasks": bound(job)}, state="RUNNING")
    report(api, token, get(api, "blocker"), state="SUCCEEDED", exit_code=0)
    loop.step()
    assert get(api, "el")["status"]["state"] == "RESIZING"  # granted; its node has not started it
    api.call("POST", "/api/v1/jobs", json=job_body("urgent", gpus=1))
    loop.step()
    job = get(api, "el")
    assert len(bound(job)) == 1 and job["draining"] == []  # no process to wait for
    loop.step()
    assert get(api, "urgent")["status"]["state"] == "SCHEDULED"
