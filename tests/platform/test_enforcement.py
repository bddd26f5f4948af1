"""Slice enforcement on the control plane: queue policies, SliceOOM reports, usage, events, metrics."""

from __future__ import annotations

import uuid
from typing import Any

from tessera.api.queues import SlicePolicy
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.services.execution import slice_policy
from tessera.platform.store.types import utcnow
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report


def test_queue_policies_are_checked_inherited_and_merged(api: Api) -> None:
    bad = api.call("POST", "/api/v1/queues", json={"name": "q", "enforcement": {"memory": "nuke"}})
    assert bad.status_code == 422
    (error,) = bad.json()["errors"]
    assert error["field"].endswith("enforcement.memory")
    assert "unknown memory policy 'nuke'; valid: kill, report" in error["message"]
    bad = api.call("POST", "/api/v1/queues", json={"name": "q", "enforcement": {"compute": "fair"}})
    assert "valid: measure, throttle, strict" in bad.json()["errors"][0]["message"]
    top = {"name": "top", "enforcement": {"memory": "report"}}
    assert api.call("POST", "/api/v1/queues", json=top).status_code == 201
    mid = {"name": "mid", "parent": "top", "enforcement": {"compute": "throttle"}}
    assert api.call("POST", "/api/v1/queues", json=mid).status_code == 201
    with api.db.write() as tx:
        assert slice_policy(tx, "mid") == SlicePolicy(memory="report", compute="throttle")
        assert slice_policy(tx, "default") == SlicePolicy(memory="kill", compute="measure")
    # an update changes only the policies it names
    r = api.call("PATCH", "/api/v1/queues/mid", json={"enforcement": {"memory": "kill"}})
    assert r.json()["spec"]["enforcement"] == {"memory": "kill", "compute": "throttle"}


def _running(api: Api, name: str, **resources: Any) -> tuple[str, dict[str, Any]]:
    token = node(api)
    api.call("POST", "/api/v1/jobs", json=job_body(name, **resources))
    SchedulingLoop(api.db).step()
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    report(api, token, job, state="RUNNING", started_at=utcnow().isoformat())
    return token, api.call("GET", f"/api/v1/jobs/{name}").json()


def test_a_slice_the_node_stopped_fails_its_job_with_slice_oom(api: Api) -> None:
    api.call("PATCH", "/api/v1/queues/default", json={"enforcement": {"compute": "strict"}})
    token, job = _running(api, "greedy", gpu_memory="4Gi")
    (alloc,) = job["allocations"]
    assert alloc["enforcement"] == {"memory": "kill", "compute": "strict"} and alloc["tier"] == "bookkeeping"
    refused = api.call(
        "POST",
        "/api/v1/nodes/n1/reports",
        token=token,
        json={
            "reports": [
                {"task_id": job["tasks"][0]["id"], "attempt": 0, "state": "FAILED", "reason": "Evicted"}
            ]
        },
    )
    assert refused.status_code == 422 and "cannot come from a node" in refused.text
    # burn exits 0 on SIGTERM: the node's reason, not the exit status, decides
    message = "used 6144 MiB of its 4096 MiB slice on GPU-n1-0"
    report(api, token, job, state="FAILED", exit_code=0, reason="SliceOOM", message=message)
    done = api.call("GET", "/api/v1/jobs/greedy").json()
    assert (done["status"]["state"], done["status"]["reason"]) == ("FAILED", "SliceOOM")
    assert message in done["status"]["message"]
    assert (done["tasks"][0]["reason"], done["tasks"][0]["message"]) == ("SliceOOM", message)


def _usage(job: dict[str, Any], tier: str = "watchdog") -> dict[str, Any]:
    (alloc,) = job["allocations"]
    slice_ = {
        "slice_id": alloc["id"],
        "job_id": job["id"],
        "job": job["name"],
        "project": job["project"],
        "task": "worker-0",
        "gpu_uuid": alloc["gpu_uuid"],
        "memory_mib": alloc["memory_mib"],
        "compute_pct": alloc["compute_pct"],
        "used_memory_mib": 3000,
        "share_pct": 31.5,
        "throttled_pct": 12.0,
        "processes": 1,
        "tier": tier,
        "memory_tier": tier,
        "compute_tier": "throttle",
    }
    gpu = {
        "uuid": alloc["gpu_uuid"],
        "index": 0,
        "model": "A100-80GB",
        "memory_mib": 81920,
        "allocated_memory_mib": alloc["memory_mib"],
        "allocated_compute_pct": alloc["compute_pct"],
        "used_memory_mib": 3000,
        "utilization_pct": 40.0,
        "tier": "watchdog",
        "tiers": ["watchdog", "cooperative"],
        "unattributed": [{"pid": 4242, "used_memory_mib": 100, "reason": "no shim ancestor"}],
    }
    return {
        "node": "n1",
        "at": utcnow().isoformat(),
        "device": "simulated",
        "poll_seconds": 0.1,
        "window_seconds": 2.0,
        "gpus": [gpu],
        "slices": [slice_],
    }


def test_heartbeats_carry_usage_to_the_api_the_tier_and_metrics(api: Api) -> None:
    token, job = _running(api, "measured", gpu_memory="8Gi")
    r = api.call("POST", "/api/v1/nodes/n1/heartbeat", token=token, json={"usage": _usage(job)})
    assert r.status_code == 200 and "usage" not in r.json()  # watchers of nodes do not see it churn
    assert api.call("GET", "/api/v1/jobs/measured").json()["allocations"][0]["tier"] == "watchdog"
    assert api.call("POST", "/api/v1/nodes/n1/heartbeat", token=token).status_code == 200  # body optional
    usage = api.call("GET", "/api/v1/nodes/n1/usage").json()
    assert usage["gpus"][0]["tier"] == "watchdog" and usage["slices"][0]["share_pct"] == 31.5
    top_job = api.call("GET", "/api/v1/jobs/measured/usage").json()
    assert [(s["tier"], s["used_memory_mib"], s["memory_mib"]) for s in top_job["slices"]] == [
        ("watchdog", 3000, 8192)
    ]
    # a user outside the project sees the GPUs but neither its slices nor other users' processes
    assert api.call("POST", "/api/v1/projects", json={"name": "other"}).status_code == 201
    outsider = api.user("eve", role="viewer", project="other")
    hidden = api.call("GET", "/api/v1/nodes/n1/usage", token=outsider).json()
    assert hidden["slices"] == [] and hidden["gpus"][0]["unattributed"] == []
    metrics = api.user("prom", role=None, scopes=["metrics"])
    scrape = api.call("GET", "/metrics", token=metrics).text
    assert 'tessera_slice_compute_share_pct{gpu="GPU-n1-0"' in scrape and 'tier="watchdog"' in scrape
    assert 'tessera_gpu_tier{gpu="GPU-n1-0",model="A100-80GB",node="n1",tier="cooperative"} 1.0' in scrape
    assert 'tessera_gpu_unattributed_processes{gpu="GPU-n1-0",model="A100-80GB",node="n1"} 1.0' in scrape


def test_node_events_land_on_its_jobs_or_on_the_node(api: Api) -> None:
    token, job = _running(api, "watched")
    events = [
        {
            "reason": "SliceMemoryExceeded",
            "message": "slice uses 6144 MiB of its 4096 MiB",
            "job_id": job["id"],
        },
        {"reason": "GpuLost", "message": "GPU GPU-n1-0 cannot be read"},
        {"reason": "Throttled", "job_id": str(uuid.uuid4())},  # not this node's job: dropped
    ]
    r = api.call("POST", "/api/v1/nodes/n1/events", token=token, json={"events": events})
    assert r.json() == {"written": 2}
    reasons = [e["reason"] for e in api.call("GET", "/api/v1/jobs/watched/events").json()]
    assert reasons[-1] == "SliceMemoryExceeded"
    on_node = api.call("GET", "/api/v1/events", params={"kind": "node"}).json()
    assert any(e["reason"] == "GpuLost" and e["type"] == "Warning" for e in on_node)
    bad = api.call("POST", "/api/v1/nodes/n1/events", token=token, json={"events": [{"reason": "Nope"}]})
    assert bad.status_code == 422 and "unknown node event 'Nope'" in bad.text
