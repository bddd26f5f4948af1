"""An eviction (the kubelet took the pod off its node) requeues a job without spending a retry, a few
times; past that, evictions spend retries like failures, so a job that keeps being evicted ends."""

from __future__ import annotations

import uuid

from tessera.api.jobs import TaskReport, TaskState, TerminalReason
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.services.execution import MAX_FREE_EVICTIONS, apply_node_reports
from tessera.platform.store.types import utcnow
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report


def _run(api: Api, token: str, name: str) -> dict:
    SchedulingLoop(api.db).step()
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    report(api, token, job, state="RUNNING", started_at=utcnow().isoformat())
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    assert job["status"]["state"] == "RUNNING", job["status"]
    return dict(job)


def _evict(api: Api, job: dict) -> None:
    task = job["tasks"][0]
    evicted = TaskReport.model_construct(
        task_id=uuid.UUID(task["id"]),
        attempt=job["status"]["attempt"],
        state=TaskState.FAILED,
        exit_code=137,
        reason=TerminalReason.EVICTED,
        message="The node was low on resource: memory.",
        start_error=None,
        started_at=None,
        finished_at=utcnow(),
    )
    assert apply_node_reports(api.db, {"n1": [evicted]}) == 1


def test_evictions_requeue_for_free_then_spend_retries(api: Api) -> None:
    token = node(api)
    body = {**job_body("evicted"), "retry": {"max_retries": 1}}
    assert api.call("POST", "/api/v1/jobs", json=body).status_code == 201
    for attempt in range(MAX_FREE_EVICTIONS):
        job = _run(api, token, "evicted")
        assert job["status"]["attempt"] == attempt
        _evict(api, job)
        requeued = api.call("GET", "/api/v1/jobs/evicted").json()
        assert requeued["status"]["state"] == "PENDING", requeued["status"]
    # past the free ones: the next eviction spends the one retry, the one after ends the job
    _evict(api, _run(api, token, "evicted"))
    assert api.call("GET", "/api/v1/jobs/evicted").json()["status"]["state"] == "PENDING"
    _evict(api, _run(api, token, "evicted"))
    done = api.call("GET", "/api/v1/jobs/evicted").json()
    assert done["status"]["state"] == "FAILED", done["status"]
    assert done["status"]["reason"] == "RetriesExhausted"
    reasons = [a["reason"] for a in done["attempts"]]
    assert reasons == ["Evicted"] * (MAX_FREE_EVICTIONS + 1) + ["RetriesExhausted"], reasons
