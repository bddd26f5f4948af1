"""What the schema fuzzing (test_fuzz.py) found, each pinned by the request that found it, on both
databases: a 4xx naming the field, never a 500, and errors documented as the problems they are."""

from __future__ import annotations

import uuid

import pytest

from tessera.api.problems import PROBLEM_MEDIA_TYPE
from tests.conftest import Api, job_body


def field_of(r: object) -> str:
    body = r.json()  # type: ignore[attr-defined]
    return str(body["errors"][0]["field"])


@pytest.mark.parametrize(
    ("report", "field"),
    [
        # SQLite: "Python int too large to convert to SQLite INTEGER" (a 500) from the FAILED
        # report's release query; PostgreSQL: a 422 that named no field
        ({"attempt": 10**20, "state": "FAILED"}, "reports.0.attempt"),
        ({"attempt": 0, "state": "FAILED", "exit_code": 10**20}, "reports.0.exit_code"),
        ({"attempt": 0, "state": "FAILED", "exit_code": -(10**20)}, "reports.0.exit_code"),
    ],
)
def test_task_reports_with_numbers_no_column_holds(api: Api, report: dict[str, object], field: str) -> None:
    body = {"reports": [{"task_id": str(uuid.uuid4()), **report}]}
    r = api.call("POST", "/api/v1/nodes/n1/reports", json=body)
    assert r.status_code == 422 and field_of(r) == field, r.text
    fine = {
        "reports": [{"task_id": str(uuid.uuid4()), "attempt": 2**31 - 1, "state": "FAILED", "exit_code": -9}]
    }
    assert api.call("POST", "/api/v1/nodes/n1/reports", json=fine).status_code == 200


def test_a_log_index_past_any_group(api: Api) -> None:
    """GET /api/v1/jobs/j/logs?index=100000000000000000000 was a 500 on SQLite (the task lookup)."""
    assert api.call("POST", "/api/v1/jobs", json=job_body("j")).status_code == 201
    r = api.call("GET", "/api/v1/jobs/j/logs", params={"index": 10**20})
    assert r.status_code == 422 and field_of(r) == "index", r.text
    assert "10000" in r.json()["errors"][0]["message"]  # the bound: a group's most replicas


def test_cache_reports_with_numbers_no_column_holds(api: Api) -> None:
    """Not a fuzz find: the same bound on the other node report that reaches integer columns."""
    body = {"caches": [{"dataset_id": str(uuid.uuid4()), "cached_bytes": 2**63, "cached_files": 1}]}
    r = api.call("POST", "/api/v1/nodes/n1/caches", json=body)
    assert r.status_code == 422 and field_of(r) == "caches.0.cached_bytes", r.text
    body["caches"][0].update(cached_bytes=1, cached_files=2**31)
    r = api.call("POST", "/api/v1/nodes/n1/caches", json=body)
    assert r.status_code == 422 and field_of(r) == "caches.0.cached_files", r.text


def test_errors_are_documented_as_problem_documents(api: Api) -> None:
    """Every route documented its 422 as FastAPI's HTTPValidationError in application/json while the
    API answers application/problem+json; 401, 403, 404 and 409 were not documented at all."""
    schema = api.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue  # /healthz, /readyz, /metrics: routers/health.py
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"401", "403", "422"} <= set(responses), (method, path, sorted(responses))
            if method in {"post", "put", "patch", "delete"}:
                assert "409" in responses, (method, path)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    schema_ = response["content"][PROBLEM_MEDIA_TYPE]["schema"]
                    assert set(schema_["properties"]) == {"type", "title", "status", "detail", "errors"}


def test_a_real_problem_matches_its_documented_schema(api: Api) -> None:
    """A 412 from cancel (If-Match) was an undocumented status: it is now listed, as a problem."""
    job = api.call("POST", "/api/v1/jobs", json=job_body("j")).json()
    r = api.call("POST", "/api/v1/jobs/j/cancel", headers={"If-Match": str(job["version"] + 1)})
    assert r.status_code == 412 and r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    documented = api.client.get("/openapi.json").json()["paths"]["/api/v1/jobs/{ref}/cancel"]["post"]
    assert "412" in documented["responses"]


def test_watch_documents_its_410_as_a_problem(api: Api) -> None:
    watch = api.client.get("/openapi.json").json()["paths"]["/api/v1/watch"]["get"]["responses"]
    assert PROBLEM_MEDIA_TYPE in watch["410"]["content"]
