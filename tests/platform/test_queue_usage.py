"""GET /api/v1/queues/usage: what each queue holds against its quota, with dominant and fair shares."""

from __future__ import annotations

from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body
from tests.platform.test_execution import node


def test_usage_borrowed_and_fair_share(api: Api) -> None:
    node(api, gpus=2)
    for name, weight, gpu in (("a", 1, 0.5), ("b", 3, 0)):
        r = api.call(
            "POST", "/api/v1/queues", json={"name": name, "weight": weight, "guaranteed": {"gpu": gpu}}
        )
        assert r.status_code == 201, r.text
    r = api.call("PATCH", "/api/v1/projects/default", json={"queues": ["default", "a", "b"]})
    assert r.status_code == 200, r.text
    api.call("POST", "/api/v1/jobs", json={**job_body("one", gpus=1), "queue": "a"})
    api.call("POST", "/api/v1/jobs", json={**job_body("half", gpu_memory="40Gi"), "queue": "b"})
    api.call("POST", "/api/v1/jobs", json={**job_body("waits", gpus=2), "queue": "b"})
    SchedulingLoop(api.db).step()
    r = api.call("GET", "/api/v1/queues/usage")
    assert r.status_code == 200, r.text
    usage = {u["queue"]: u for u in r.json()}
    a, b = usage["a"], usage["b"]
    assert (a["used"]["gpu"], a["borrowed"]["gpu"], a["running"]) == (1.0, 0.5, 1)
    assert (b["used"]["gpu"], b["borrowed"]["gpu"], b["running"], b["pending"]) == (0.5, 0.5, 1, 1)
    assert a["dominant_share"] == 0.5  # 1 of the cluster's 2 GPUs
    # a and b are active siblings with weights 1 and 3 (default holds nothing and waits for nothing)
    assert (a["fair_share"], b["fair_share"]) == (0.25, 0.75)
    assert usage["default"]["used"]["gpu"] == 0 and usage["default"]["running"] == 0
