"""Jobs over the real app on SQLite and PostgreSQL: submit, read, list, cancel, delete, bad input."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, job_body

PROBLEM = "application/problem+json"


def fields(response: Any) -> dict[str, str]:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def test_submit_stores_a_pending_job_with_reason_and_event(api: Api) -> None:
    r = api.call("POST", "/api/v1/jobs", json=job_body("hello"))
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"]["state"] == "PENDING"
    assert job["status"]["pending_reason"] == {"code": "NoNodes", "message": "no node has joined yet"}
    assert job["queue"] == "default" and job["project"] == "default" and job["owner"] == "admin"
    assert job["spec"]["groups"][0]["resources"]["gpu_memory"] == 4096
    assert [t["state"] for t in job["tasks"]] == ["PENDING"]

    by_name = api.call("GET", "/api/v1/jobs/hello").json()
    by_id = api.call("GET", f"/api/v1/jobs/{job['id']}").json()
    assert by_name == by_id
    events = api.call("GET", "/api/v1/jobs/hello/events").json()
    assert [(e["reason"], e["to_state"]) for e in events] == [("Submitted", "PENDING")]


def test_gang_makes_one_task_per_worker(api: Api) -> None:
    body = job_body("gang")
    body["groups"][0].update(replicas=4, min_available=3)
    job = api.call("POST", "/api/v1/jobs", json=body).json()
    assert [(t["group"], t["index"]) for t in job["tasks"]] == [("worker", i) for i in range(4)]
    assert job["spec"]["groups"][0]["min_available"] == 3


@pytest.mark.parametrize(
    ("resources", "field", "text"),
    [
        ({"gpu_memory": "-4Gi"}, "groups.0.resources.gpu_memory", "negative"),
        ({"gpu_memory": "4 gigs"}, "groups.0.resources.gpu_memory", "512Mi, 10Gi or 10GiB"),
        ({"gpu_compute": 0}, "groups.0.resources.gpu_compute", "greater than or equal to 1"),
        ({"gpu_compute": 150}, "groups.0.resources.gpu_compute", "less than or equal to 100"),
        ({"memory": "-1Gi"}, "groups.0.resources.memory", "negative"),
        ({"gpus": 1.5}, "groups.0.resources", "whole GPUs"),
    ],
)
def test_bad_resources_name_the_field(api: Api, resources: dict, field: str, text: str) -> None:
    r = api.call("POST", "/api/v1/jobs", json=job_body("bad", **resources))
    assert r.status_code == 422
    errors = fields(r)
    assert field in errors and text in errors[field], errors
    assert api.call("GET", "/api/v1/jobs").json()["items"] == []


def test_unknown_fields_are_refused(api: Api) -> None:
    body = job_body("x")
    body["gpu"] = 1
    body["groups"][0]["resources"]["gpu_memroy"] = "4Gi"
    errors = fields(api.call("POST", "/api/v1/jobs", json=body))
    assert set(errors) == {"gpu", "groups.0.resources.gpu_memroy"}
    assert all("unknown field" in m for m in errors.values())


def test_unknown_queue_and_project(api: Api) -> None:
    r = api.call("POST", "/api/v1/jobs", json={**job_body("q"), "queue": "nope"})
    assert r.status_code == 422 and "existing queues: ['default']" in fields(r)["queue"]
    r = api.call("POST", "/api/v1/jobs", json={**job_body("q"), "project": "nope"})
    assert r.status_code == 422 and "no project named 'nope'" in fields(r)["project"]


def test_name_clash_with_a_live_job_only(api: Api) -> None:
    assert api.call("POST", "/api/v1/jobs", json=job_body("same")).status_code == 201
    r = api.call("POST", "/api/v1/jobs", json=job_body("same"))
    assert r.status_code == 409 and "already exists" in fields(r)["name"]
    assert api.call("POST", "/api/v1/jobs/same/cancel").status_code == 200
    again = api.call("POST", "/api/v1/jobs", json=job_body("same"))
    assert again.status_code == 201
    # the name now finds the live job, not the cancelled one
    assert api.call("GET", "/api/v1/jobs/same").json()["id"] == again.json()["id"]


def test_idempotency_key_returns_the_first_job(api: Api) -> None:
    key = {"Idempotency-Key": "abc-123"}
    first = api.call("POST", "/api/v1/jobs", json=job_body(None), headers=key)
    assert first.status_code == 201
    again = api.call("POST", "/api/v1/jobs", json=job_body(None), headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert len(api.call("GET", "/api/v1/jobs").json()["items"]) == 1
    other = api.call("POST", "/api/v1/jobs", json=job_body("different"), headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in fields(other)
    assert len(api.call("GET", "/api/v1/jobs").json()["items"]) == 1


def test_generated_names_and_listing_pages(api: Api) -> None:
    for i in range(7):
        api.call("POST", "/api/v1/jobs", json=job_body(f"job-{i}"))
    api.call("POST", "/api/v1/jobs/job-3/cancel")
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["continue"] = cursor
        page = api.call("GET", "/api/v1/jobs", params=params).json()
        names += [j["name"] for j in page["items"]]
        cursor = page["continue"]
        if not cursor:
            break
    assert names == [f"job-{i}" for i in reversed(range(7))]  # newest first, each once

    pending = api.call("GET", "/api/v1/jobs", params={"state": "PENDING"}).json()["items"]
    assert len(pending) == 6
    cancelled = api.call("GET", "/api/v1/jobs", params={"state": ["CANCELLED"]}).json()["items"]
    assert [j["name"] for j in cancelled] == ["job-3"]
    assert [j["name"] for j in api.call("GET", "/api/v1/jobs", params={"q": "-5"}).json()["items"]] == [
        "job-5"
    ]
    bad = api.call("GET", "/api/v1/jobs", params={"continue": "garbage!"})
    assert bad.status_code == 422 and "continue" in fields(bad)
    bad_state = api.call("GET", "/api/v1/jobs", params={"state": "SLEEPING"})
    assert bad_state.status_code == 422 and "state.0" in fields(bad_state)
    generated = api.call("POST", "/api/v1/jobs", json=job_body(None)).json()["name"]
    assert generated.startswith("train-")


def test_cancel_then_delete(api: Api) -> None:
    job = api.call("POST", "/api/v1/jobs", json=job_body("c")).json()
    stale = api.call("POST", "/api/v1/jobs/c/cancel", headers={"If-Match": "99"})
    assert stale.status_code == 412 and "read it again" in stale.json()["detail"]
    done = api.call("POST", "/api/v1/jobs/c/cancel", headers={"If-Match": str(job["version"])}).json()
    assert done["status"]["state"] == "CANCELLED" and done["status"]["reason"] == "Cancelled"
    assert [t["state"] for t in done["tasks"]] == ["CANCELLED"]
    twice = api.call("POST", "/api/v1/jobs/c/cancel")
    assert twice.status_code == 409 and "already finished" in twice.json()["detail"]
    events = [e["reason"] for e in api.call("GET", "/api/v1/jobs/c/events").json()]
    assert events == ["Submitted", "Cancelled"]
    assert api.call("DELETE", "/api/v1/jobs/c").status_code == 204
    assert api.call("GET", "/api/v1/jobs/c").status_code == 404


def test_delete_of_a_live_job_cancels_it_first(api: Api) -> None:
    job = api.call("POST", "/api/v1/jobs", json=job_body("live")).json()
    assert api.call("DELETE", "/api/v1/jobs/live").status_code == 204
    reasons = [e["reason"] for e in api.call("GET", "/api/v1/events", params={"object_id": job["id"]}).json()]
    assert reasons == ["Submitted", "Cancelled", "Deleted"]


def test_queue_deleted_fails_its_pending_jobs(api: Api) -> None:
    assert api.call("POST", "/api/v1/queues", json={"name": "research"}).status_code == 201
    r = api.call("PATCH", "/api/v1/projects/default", json={"queues": ["default", "research"]})
    assert r.status_code == 200, r.text
    api.call("POST", "/api/v1/jobs", json={**job_body("r"), "queue": "research"})
    assert api.call("DELETE", "/api/v1/queues/research").status_code == 204
    job = api.call("GET", "/api/v1/jobs/r").json()
    assert job["status"]["state"] == "FAILED" and job["status"]["reason"] == "QueueDeleted"
    assert api.call("GET", "/api/v1/projects/default").json()["queues"] == ["default"]
    assert api.call("DELETE", "/api/v1/queues/default").status_code == 409
