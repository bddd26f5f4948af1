"""Node selectors (Arena's --selector): a job runs only on nodes whose labels match."""

from __future__ import annotations

from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body
from tests.platform.test_execution import GPU


def labelled_node(api: Api, name: str, **labels: str) -> None:
    token = api.user(f"agent-{name}", role=None, scopes=["node"])
    inventory = {"gpus": [{**GPU, "uuid": f"GPU-{name}", "index": 0}], "cpu": 8, "memory": "32Gi"}
    body = {"name": name, "inventory": inventory, "labels": labels}
    r = api.call("POST", "/api/v1/nodes", token=token, json=body)
    assert r.status_code == 200, r.text


def test_a_selector_picks_the_matching_node_and_explains_when_none_does(api: Api) -> None:
    labelled_node(api, "n1", zone="a")
    labelled_node(api, "n2", zone="b", pool="train")
    api.call("POST", "/api/v1/jobs", json={**job_body("pick", gpus=1), "node_selector": {"zone": "b"}})
    api.call(
        "POST", "/api/v1/jobs", json={**job_body("both", gpus=1), "node_selector": {"zone": "b", "pool": "x"}}
    )
    loop = SchedulingLoop(api.db)
    loop.step()
    loop.step()
    pick = api.call("GET", "/api/v1/jobs/pick").json()
    assert pick["status"]["state"] == "SCHEDULED" and {a["node"] for a in pick["allocations"]} == {"n2"}
    both = api.call("GET", "/api/v1/jobs/both").json()
    assert both["status"]["state"] == "PENDING"
    message = both["status"]["pending_reason"]["message"]
    assert "node selector pool=x,zone=b" in message and "allows only: none" in message
    # without a selector, the free GPU of n1 is used
    api.call("POST", "/api/v1/jobs", json=job_body("any", gpus=1))
    loop.step()
    any_job = api.call("GET", "/api/v1/jobs/any").json()
    assert {a["node"] for a in any_job["allocations"]} == {"n1"}
