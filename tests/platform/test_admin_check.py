"""`tessera admin check`: a healthy store passes; each broken invariant is found and named."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.store.rows import AllocationRow, JobRow, TaskRow
from tests.conftest import Api, job_body
from tests.platform.test_execution import node


def _check(api: Api, token: str | None = None) -> dict:
    r = api.call("GET", "/api/v1/admin/check", token=token)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _kinds(report: dict) -> set[str]:
    return {p["kind"] for p in report["problems"]}


def _bound(api: Api, name: str, **resources: object) -> dict:
    assert api.call("POST", "/api/v1/jobs", json=job_body(name, **resources)).status_code == 201
    SchedulingLoop(api.db).step()
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    assert job["status"]["state"] == "SCHEDULED", job["status"]
    return dict(job)


def test_a_healthy_store_passes_and_only_admins_may_ask(api: Api) -> None:
    node(api, gpus=2)
    _bound(api, "a", gpu_memory="30Gi")
    _bound(api, "b", gpu_memory="30Gi")
    report = _check(api)
    assert report["ok"] is True and report["problems"] == []
    assert (
        report["checked"]["jobs"] == 2 and report["checked"]["slices"] == 2 and report["checked"]["gpus"] == 2
    )
    member = api.user("mia")
    assert api.call("GET", "/api/v1/admin/check", token=member).status_code == 403


def test_overcommit_leaks_and_orphans_are_found(api: Api) -> None:
    node(api, gpus=1)
    a = _bound(api, "a", gpu_memory="60Gi")
    with api.db.write() as tx:  # break the store as a bug (or a second scheduler) would
        first = tx.session.execute(select(AllocationRow)).scalars().first()
        assert first is not None
        tx.session.add(
            AllocationRow(
                job_id=first.job_id,
                task_id=first.task_id,
                node="n1",
                gpu_uuid=first.gpu_uuid,
                memory_mib=40 * 1024,
                compute_pct=10,
                revision=tx.revision,
            )
        )
        tx.session.add(
            AllocationRow(
                job_id=first.job_id,
                task_id=first.task_id,
                node="n1",
                gpu_uuid="GPU-nowhere",
                memory_mib=1,
                compute_pct=1,
                revision=tx.revision,
            )
        )
        row = tx.session.get(JobRow, uuid.UUID(a["id"]))
        assert row is not None
        row.state = "SUCCEEDED"  # a finished job that still holds slices
        task = tx.session.execute(select(TaskRow).where(TaskRow.job_id == row.id)).scalars().one()
        task.attempt = 7  # a task ahead of its job
    report = _check(api)
    assert report["ok"] is False
    assert {"overcommit", "unknown-gpu", "leaked-slice", "future-attempt"} <= _kinds(report), report
    over = next(p for p in report["problems"] if p["kind"] == "overcommit")
    assert "GPU-n1-0" in over["object"] and "102400 MiB" in over["message"]
