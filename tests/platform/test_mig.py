"""MIG instances end to end through the store: discovered from the inventory, placed whole,
recorded on the allocation, handed to the task as its CUDA device, and never given twice."""

from __future__ import annotations

import uuid

from tessera.api.jobs import Job
from tessera.jobs.launch import launches_for
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.services.execution import bind_job
from tessera.scheduler.model import Bind, SlicePlacement
from tests.conftest import Api, job_body


def mig_node(api: Api) -> None:
    token = api.user("agent-m1", role=None, scopes=["node"])
    instances = [
        {
            "uuid": f"MIG-1g-{i}",
            "profile": "1g.18gb",
            "memory_mib": 16384,
            "gpu_instance_id": i,
            "compute_instance_id": 0,
        }
        for i in range(2)
    ]
    gpus = [
        {
            "uuid": "GPU-m",
            "index": 0,
            "model": "H200",
            "memory_mib": 143771,
            "mig_mode": True,
            "mig_instances": instances,
        },
        {"uuid": "GPU-w", "index": 1, "model": "H200", "memory_mib": 143771},
    ]
    body = {"name": "m1", "inventory": {"gpus": gpus, "cpu": 16, "memory": "64Gi"}}
    r = api.call("POST", "/api/v1/nodes", token=token, json=body)
    assert r.status_code == 200, r.text


def test_mig_jobs_get_whole_instances_and_their_uuid(api: Api) -> None:
    mig_node(api)
    for name in ("m0", "m1", "m2"):
        api.call("POST", "/api/v1/jobs", json=job_body(name, mig_profile="1g.18gb"))
    api.call("POST", "/api/v1/jobs", json=job_body("whole", gpus=1))
    SchedulingLoop(api.db).step()
    jobs = {n: api.call("GET", f"/api/v1/jobs/{n}").json() for n in ("m0", "m1", "m2", "whole")}
    placed = [n for n in ("m0", "m1", "m2") if jobs[n]["status"]["state"] == "SCHEDULED"]
    assert len(placed) == 2
    instances = sorted(jobs[n]["allocations"][0]["mig_instance"] for n in placed)
    assert instances == ["MIG-1g-0", "MIG-1g-1"]
    assert all(jobs[n]["allocations"][0]["gpu_uuid"] == "GPU-m" for n in placed)
    waiting = next(n for n in ("m0", "m1", "m2") if n not in placed)
    assert "free MIG instance 1g.18gb" in jobs[waiting]["status"]["pending_reason"]["message"]
    assert jobs["whole"]["allocations"][0]["gpu_uuid"] == "GPU-w"  # not the GPU in MIG mode
    launch = launches_for(Job.model_validate(jobs[placed[0]]), "m1")[0]
    assert launch.env["CUDA_VISIBLE_DEVICES"] == jobs[placed[0]]["allocations"][0]["mig_instance"]


def test_a_stale_bind_cannot_take_a_mig_instance_twice(api: Api) -> None:
    mig_node(api)
    api.call("POST", "/api/v1/jobs", json=job_body("a", mig_profile="1g.18gb"))
    SchedulingLoop(api.db).step()
    taken = api.call("GET", "/api/v1/jobs/a").json()["allocations"][0]["mig_instance"]
    free = ({"MIG-1g-0", "MIG-1g-1"} - {taken}).pop()
    b = api.call("POST", "/api/v1/jobs", json=job_body("b", mig_profile="1g.18gb")).json()
    job, task = uuid.UUID(b["id"]), uuid.UUID(b["tasks"][0]["id"])

    def bind(instance: str) -> bool:
        placement = SlicePlacement(task, "m1", "GPU-m", 0, 16384, 100 / 7, mig_uuid=instance)
        with api.db.write() as tx:
            return bind_job(tx, job, b["version"], Bind(job, (placement,)))

    assert not bind(taken)  # a scheduler with a stale view loses, and nothing is written
    assert api.call("GET", "/api/v1/jobs/b").json()["allocations"] == []
    assert bind(free)
    assert api.call("GET", "/api/v1/jobs/b").json()["allocations"][0]["mig_instance"] == free
