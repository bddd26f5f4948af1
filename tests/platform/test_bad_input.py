"""Bad input gets a 4xx naming the field, on both databases, and nothing stored is harmed."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import Api, job_body


def only_job_is(api: Api, name: str) -> None:
    assert [j["name"] for j in api.call("GET", "/api/v1/jobs").json()["items"]] == [name]


@pytest.mark.parametrize("deadline", [1e300, "99999999999999d", "3651d", -5])
def test_absurd_durations(api: Api, deadline: object) -> None:
    api.call("POST", "/api/v1/jobs", json=job_body("keep"))
    r = api.call("POST", "/api/v1/jobs", json={**job_body("x"), "deadline": deadline})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "deadline", r.text
    only_job_is(api, "keep")


@pytest.mark.parametrize("memory", ["9" * 400 + "Ti", "2048Ti", 10**12])
def test_absurd_memory(api: Api, memory: object) -> None:
    r = api.call("POST", "/api/v1/jobs", json=job_body("x", gpu_memory=memory))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "groups.0.resources.gpu_memory"
    assert "maximum" in r.json()["errors"][0]["message"]


def test_tessera_labels_are_reserved(api: Api) -> None:
    """tessera.io/ labels mark Tessera's own jobs (service replicas, pods others created): a user's
    job may not pose as one."""
    api.call("POST", "/api/v1/jobs", json=job_body("keep"))
    r = api.call("POST", "/api/v1/jobs", json={**job_body("x"), "labels": {"tessera.io/external": "abc"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "labels", r.text
    assert "tessera.io/" in r.json()["errors"][0]["message"]
    only_job_is(api, "keep")


def test_malformed_json_names_the_body(api: Api) -> None:
    r = api.call("POST", "/api/v1/jobs", content=b'{"name": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_huge_revisions_and_forged_cursors(api: Api) -> None:
    for path, param in (("/api/v1/watch", "since"), ("/api/v1/events", "after_revision")):
        r = api.call("GET", path, params={param: 10**23})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == param
    naive = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00", "0" * 32]).encode()).decode()
    r = api.call("GET", "/api/v1/jobs", params={"continue": naive})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "continue"


def test_nul_characters_are_refused_not_a_500(api: Api) -> None:
    api.call("POST", "/api/v1/jobs", json=job_body("keep"))
    body = job_body("nul")
    body["groups"][0]["command"] = ["echo", "a\x00b"]
    r = api.call("POST", "/api/v1/jobs", json=body)
    assert r.status_code in (201, 422), r.text  # SQLite stores NUL; PostgreSQL refuses it
    assert api.call("GET", "/api/v1/jobs/x%00y").status_code in (404, 422)
    assert api.call("GET", "/api/v1/jobs", params={"q": "a\x00"}).status_code in (200, 422)
    assert api.call("GET", "/api/v1/jobs/keep").status_code == 200


def test_a_token_never_outlives_its_creator(api: Api) -> None:
    short = api.user("sam", expires_in="60s")
    r = api.call("POST", "/api/v1/tokens", token=short, json={"name": "forever"})
    assert r.status_code == 201
    created = r.json()["token"]["expires_at"]
    mine = [t for t in api.call("GET", "/api/v1/tokens", token=short).json() if t["name"] == "sam-token"]
    assert created is not None and created == mine[0]["expires_at"]


def test_deleted_jobs_of_other_projects_stay_invisible_to_watchers(api: Api) -> None:
    api.call("POST", "/api/v1/projects", json={"name": "other"})
    member = api.user("walt")
    api.call("POST", "/api/v1/jobs", json={**job_body("gone"), "project": "other"})
    assert api.call("DELETE", "/api/v1/jobs/gone", params={"project": "other"}).status_code == 204
    r = api.call("GET", "/api/v1/watch", token=member, params={"since": 0, "timeout": 0.5, "kind": "job"})
    assert [line for line in r.text.splitlines() if '"CHANGE"' in line] == []
    admin = api.call("GET", "/api/v1/watch", params={"since": 0, "timeout": 0.5, "kind": "job"})
    deletes = [json.loads(x) for x in admin.text.splitlines() if '"delete"' in x]
    assert deletes and deletes[0]["object"] == {"name": "gone", "project": "other"}


def test_member_removal_answers_204(api: Api) -> None:
    api.user("rob")
    r = api.call("DELETE", "/api/v1/projects/default/members/rob")
    assert r.status_code == 204
    assert "rob" not in [m["user"] for m in api.call("GET", "/api/v1/projects/default").json()["members"]]
