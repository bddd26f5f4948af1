"""Services in the control plane, without processes: the API, the serving controller driven by
gateway reports (scale from zero, readiness, canary, promote, drain), bad input and authorization."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest

from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.controllers.serving import ServingLoop
from tessera.platform.services.traffic import Traffic
from tests.conftest import Api
from tests.platform.test_execution import node, report


def body(name: str = "m", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["python", "examples/model_server.py"],
        "resources": {"gpu_memory": "8Gi"},
        "min_replicas": 0,
        "max_replicas": 2,
        "readiness_path": "/ready",
        "target_concurrency": 2,
        "scale_to_zero_grace": "30s",
        **fields,
    }


class Rig:
    """The API, a node, the scheduler, the serving controller and a gateway's reports by hand."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.node_token = node(api, gpus=1)
        self.gateway_token = api.user("gw", role=None, scopes=["gateway"])
        self.traffic: Traffic = api.client.app.state.traffic  # type: ignore[attr-defined]
        self.now = 1000.0
        self.traffic.now = lambda: self.now
        self.serving = ServingLoop(api.db, self.traffic)
        self.scheduler = SchedulingLoop(api.db)
        self.routes_revision = 0

    def service(self, name: str = "m") -> dict[str, Any]:
        r = self.api.call("GET", f"/api/v1/services/{name}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def report(
        self, revisions: list[dict[str, Any]], replicas: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        from tessera.api.serving import GatewayReport
        from tessera.platform.controllers.serving import handle_report

        body = {
            "gateway": "gw",
            "url": "http://127.0.0.1:9999",
            "interval_s": 1.0,
            "routes_revision": self.routes_revision,
            "revisions": revisions,
            "replicas": replicas or [],
        }
        table = handle_report(self.api.db, self.traffic, GatewayReport.model_validate(body))
        self.routes_revision = table.revision
        return table.model_dump(mode="json")

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds
        self.serving.step()

    def run_replicas(self, name: str = "m") -> None:
        """Bind pending replicas' workloads and report them started."""
        self.scheduler.step()
        self.serving.step()
        for replica in self.service(name)["replicas"]:
            if replica["state"] == "Starting":
                job = self.api.call("GET", f"/api/v1/jobs/{replica['job_id']}").json()
                report(self.api, self.node_token, job, state="RUNNING")


def sample(
    svc: dict[str, Any], revision: int, concurrency: float = 0, held: int = 0, **more: Any
) -> dict[str, Any]:
    return {"service_id": svc["id"], "revision": revision, "concurrency": concurrency, "held": held, **more}


def test_scale_from_zero_readiness_canary_promote_and_drain(api: Api) -> None:
    rig = Rig(api)
    r = api.call("POST", "/api/v1/services", json=body())
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token and created["status"]["url"] is None  # no gateway has reported yet
    rig.tick()
    svc = rig.service()
    assert svc["replicas"] == [] and svc["revisions"][0]["desired_replicas"] == 0

    # a request held at the gateway: one replica starts, its workload hidden from the job list
    table = rig.report([sample(svc, 1, concurrency=1, held=1)])
    assert table["services"][0]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    rig.tick()
    svc = rig.service()
    assert [p["state"] for p in svc["replicas"]] == ["Pending"]
    assert svc["status"]["url"] == "http://127.0.0.1:9999/serve/m/"
    assert api.call("GET", "/api/v1/jobs").json()["items"] == []
    rig.run_replicas()
    svc = rig.service()
    replica = svc["replicas"][0]
    assert replica["state"] == "Starting" and replica["endpoint"].startswith("127.0.0.1:")
    job = api.call("GET", f"/api/v1/jobs/{replica['job_id']}").json()
    assert job["spec"]["kind"] == "serve" and job["status"]["state"] == "RUNNING"

    # the gateway probes it: routes carry its endpoint; ready once the probe passes
    table = rig.report([sample(svc, 1, concurrency=1, held=1)], [])
    assert table["services"][0]["revisions"][0]["replicas"][0]["endpoint"] == replica["endpoint"]
    rig.report(
        [sample(svc, 1, concurrency=1)], [{"replica_id": replica["id"], "ready": True, "in_flight": 1}]
    )
    svc = rig.service()
    assert svc["replicas"][0]["state"] == "Ready" and svc["revisions"][0]["cold_start_s"] is not None
    assert svc["status"]["ready_replicas"] == 1
    scraped = api.call("GET", "/metrics").text
    assert 'tessera_service_ready_replicas{project="default",revision="1",service="m"} 1.0' in scraped
    assert 'tessera_service_traffic_percent{project="default",revision="1",service="m"} 100.0' in scraped

    # a canary: revision 2 gets 20% and scales up on its own; revision 1 keeps 80%
    r = api.call("PATCH", "/api/v1/services/m", json={"env": {"MODEL": "v2"}, "canary": 20})
    assert r.status_code == 200, r.text
    assert r.json()["status"]["traffic"] == [{"revision": 1, "percent": 80}, {"revision": 2, "percent": 20}]
    rig.tick()
    svc = rig.service()
    by_rev = {v["number"]: v for v in svc["revisions"]}
    assert by_rev[2]["desired_replicas"] == 1  # active now: starts one without waiting for a request
    rig.run_replicas()
    svc = rig.service()
    new = next(p for p in svc["replicas"] if p["revision_number"] == 2)
    rig.report(
        [sample(svc, 1), sample(svc, 2)],
        [
            {"replica_id": replica["id"], "ready": True, "in_flight": 0},
            {"replica_id": new["id"], "ready": True, "in_flight": 0},
        ],
    )
    # promote: revision 1 loses its traffic, and its replica drains before it stops
    r = api.call("POST", "/api/v1/services/m/promote")
    assert r.status_code == 200 and r.json()["status"]["traffic"] == [{"revision": 2, "percent": 100}]
    # a minute on (the gateway reporting all along): its last traffic is out of the 60s window and
    # it has been idle past the grace period; a request still runs on it at this gateway
    rig.now += 61
    busy = [{"replica_id": replica["id"], "ready": True, "in_flight": 1}]
    rig.report([sample(svc, 1), sample(svc, 2)], busy)
    rig.tick(0.5)
    svc = rig.service()
    old = next(p for p in svc["replicas"] if p["id"] == replica["id"])
    assert old["state"] == "Terminating"
    route = rig.report([sample(svc, 1), sample(svc, 2)], busy)
    drained = [
        p for rev in route["services"][0]["revisions"] for p in rev["replicas"] if p["id"] == replica["id"]
    ]
    assert drained and drained[0]["draining"]
    rig.tick()
    assert next(p for p in rig.service()["replicas"] if p["id"] == replica["id"])["state"] == "Terminating"
    rig.report(
        [sample(svc, 1), sample(svc, 2)], [{"replica_id": replica["id"], "ready": True, "in_flight": 0}]
    )
    rig.tick()
    old = next(p for p in rig.service()["replicas"] if p["id"] == replica["id"])
    assert old["state"] == "Stopped"
    job = api.call("GET", f"/api/v1/jobs/{replica['job_id']}").json()
    assert job["status"]["state"] == "CANCELLED"

    # rollback brings revision 1 back (its autoscaler starts it again)
    r = api.call("POST", "/api/v1/services/m/rollback")
    assert r.json()["status"]["traffic"] == [{"revision": 1, "percent": 100}]
    events = api.call("GET", "/api/v1/events", params={"object_id": svc["id"]}).json()
    reasons = [e["reason"] for e in events]
    for reason in ("Created", "Scaled", "ReplicaReady", "TrafficChanged"):
        assert reason in reasons, reasons
    assert all(token not in str(e) for e in events)

    # delete: its workloads are cancelled
    assert api.call("DELETE", "/api/v1/services/m").status_code == 204
    jobs = api.call("GET", "/api/v1/jobs", params={"services": True}).json()["items"]
    assert all(j["status"]["state"] in ("CANCELLED", "SUCCEEDED", "FAILED") for j in jobs)
    assert api.call("GET", "/api/v1/services/m").status_code == 404


def test_a_failed_replica_is_replaced(api: Api) -> None:
    rig = Rig(api)
    api.call("POST", "/api/v1/services", json=body(min_replicas=1, max_replicas=1, public=True))
    rig.tick()
    rig.run_replicas()
    first = rig.service()["replicas"][0]
    job = api.call("GET", f"/api/v1/jobs/{first['job_id']}").json()
    report(api, rig.node_token, job, state="FAILED", exit_code=1)
    rig.tick()
    assert [p["state"] for p in rig.service()["replicas"]] == ["Failed"]  # a back-off of 1s first
    time.sleep(1.1)
    rig.tick()
    replicas = rig.service()["replicas"]
    assert [p["state"] for p in replicas] == ["Failed", "Pending"]
    assert "FAILED" in replicas[0]["message"]
    events = api.call("GET", "/api/v1/events", params={"object_id": rig.service()["id"]}).json()
    assert any(e["reason"] == "ReplicaFailed" for e in events)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"name": "x" * 41}, "name", "at most 40 characters"),
        ({"min_replicas": 3, "max_replicas": 2}, "", "cannot exceed max_replicas"),
        ({"queue": "nope"}, "queue", "no queue named 'nope'"),
        ({"readiness_path": "ready"}, "readiness_path", "starting with '/'"),
        ({"panic_window": "90s"}, "", "panic_window must be shorter"),
        ({"resources": {"gpu_memory": "900Gi"}}, "resources", "no registered node could ever hold"),
        ({"image": "pytorch/serve"}, "image", "cannot run images"),
    ],
)
def test_bad_services_are_refused_naming_the_field(
    api: Api, change: dict[str, Any], field: str, words: str
) -> None:
    node(api)
    r = api.call("POST", "/api/v1/services", json={**body("bad"), **change})
    assert r.status_code == 422, r.text
    problem = r.json()
    text = str(problem)
    assert words in text, text
    if field:
        assert field in text
    assert api.call("GET", "/api/v1/services").json() == []


def test_bad_traffic_and_updates(api: Api) -> None:
    node(api)
    api.call("POST", "/api/v1/services", json=body())
    r = api.call("PUT", "/api/v1/services/m/traffic", json={"targets": [{"revision": 1, "percent": 90}]})
    assert r.status_code == 422 and "add up to 100" in r.text
    r = api.call("PUT", "/api/v1/services/m/traffic", json={"targets": [{"revision": 7, "percent": 100}]})
    assert r.status_code == 422 and "no revision 7" in r.text and "targets.0.revision" in r.text
    r = api.call("PATCH", "/api/v1/services/m", json={})
    assert r.status_code == 422 and "nothing to update" in r.text
    r = api.call("POST", "/api/v1/services/m/rollback")
    assert r.status_code == 422 and "nothing to roll back to" in r.text
    r = api.call("POST", "/api/v1/services", json=body())
    assert r.status_code == 409 and "already exists" in r.text
    # nothing stored was changed by the refusals
    svc = api.call("GET", "/api/v1/services/m").json()
    assert svc["status"]["traffic"] == [{"revision": 1, "percent": 100}] and len(svc["revisions"]) == 1


def test_who_may_see_and_change_a_service(api: Api) -> None:
    node(api)
    api.call("POST", "/api/v1/services", json=body())
    api.call("POST", "/api/v1/projects", json={"name": "other"})
    outsider = api.user("eve", project="other")
    viewer = api.user("val", role="viewer")
    assert api.call("GET", "/api/v1/services/m", token=outsider).status_code == 404
    assert api.call("GET", "/api/v1/services", token=outsider).json() == []
    assert api.call("DELETE", "/api/v1/services/m", token=outsider).status_code == 404
    assert api.call("GET", "/api/v1/services/m", token=viewer).status_code == 200
    assert api.call("DELETE", "/api/v1/services/m", token=viewer).status_code == 403
    assert api.call("POST", "/api/v1/services/m/token", token=viewer).status_code == 403
    # the gateway's report needs a gateway-scope token; a gateway token cannot read services
    report = {"gateway": "gw", "url": "http://x", "interval_s": 1, "routes_revision": 0}
    assert api.call("POST", "/api/v1/gateway/report", json=report, token=viewer).status_code == 403
    gw = api.user("gw", role=None, scopes=["gateway"])
    assert api.call("POST", "/api/v1/gateway/report", json=report, token=gw).status_code == 200
    assert api.call("GET", "/api/v1/services/m", token=gw).status_code == 403
    # rotating the token changes the hash the gateways check
    first = api.call("POST", "/api/v1/gateway/report", json=report, token=gw).json()["services"][0]
    rotated = api.call("POST", "/api/v1/services/m/token").json()["token"]
    second = api.call("POST", "/api/v1/gateway/report", json=report, token=gw).json()["services"][0]
    assert first["token_sha256"] != second["token_sha256"] == hashlib.sha256(rotated.encode()).hexdigest()
    assert uuid.UUID(second["service_id"])


def test_only_services_make_serve_workloads(api: Api) -> None:
    node(api)
    body = {"name": "sneaky", "kind": "serve", "groups": [{"command": ["python", "-c", "1"]}]}
    r = api.call("POST", "/api/v1/jobs", json=body)
    assert r.status_code == 422 and "create a service instead" in r.text and "kind" in r.text


def test_update_merges_env_and_going_private_mints_a_token(api: Api) -> None:
    node(api)
    api.call("POST", "/api/v1/services", json=body(env={"A": "1", "B": "2"}, public=True))
    r = api.call("PATCH", "/api/v1/services/m", json={"env": {"B": None, "C": "3"}})
    assert r.status_code == 200, r.text
    latest = r.json()["revisions"][-1]["spec"]
    assert latest["env"] == {"A": "1", "C": "3"} and r.json()["token"] is None
    r = api.call("PATCH", "/api/v1/services/m", json={"public": False})
    assert r.status_code == 200 and r.json()["token"], r.text
    assert len(r.json()["revisions"]) == 2  # who may call it is not what runs: no new revision
    r = api.call("PATCH", "/api/v1/services/m", json={"min_replicas": 5, "max_replicas": 2})
    assert r.status_code == 422 and "cannot exceed max_replicas" in r.text and "errors.pydantic" not in r.text
    r = api.call("PATCH", "/api/v1/services/m", json={"env": {"1BAD": "x"}})
    assert r.status_code == 422 and "env key '1BAD'" in r.text


def test_a_restarted_control_plane_keeps_the_scale_until_gateways_report(api: Api) -> None:
    rig = Rig(api)
    api.call("POST", "/api/v1/services", json=body(min_replicas=0, max_replicas=2, target_concurrency=1))
    svc = rig.service()
    rig.report([sample(svc, 1, concurrency=2)])
    rig.tick()
    assert rig.service()["revisions"][0]["desired_replicas"] == 2
    # a new serving loop with no reports yet (as after a restart) changes nothing
    fresh = ServingLoop(api.db, Traffic())
    fresh.step()
    assert rig.service()["revisions"][0]["desired_replicas"] == 2
    assert [p["state"] for p in rig.service()["replicas"]] == ["Pending", "Pending"]


def test_the_change_feed_shows_services_to_their_projects_only(api: Api) -> None:
    node(api)
    api.call("POST", "/api/v1/services", json=body(env={"HF_TOKEN": "hush"}))
    api.call("POST", "/api/v1/projects", json={"name": "other"})
    outsider = api.user("eve", project="other")
    params = {"since": 0, "timeout": 0.5}
    feed = api.call("GET", "/api/v1/watch", params=params, token=outsider).text
    assert '"kind": "service"' not in feed.replace('"kind":"service"', '"kind": "service"')
    assert "hush" not in feed and '"revision"' in feed  # bookmarks only
    member = api.user("mia")
    mine = api.call("GET", "/api/v1/watch", params=params, token=member).text
    assert '"service"' in mine and '"revision"' in mine
