"""Loads as node agents drive them, and when a dataset may be called Ready (never half-cached)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.platform.controllers.datasets import list_sources
from tests.conftest import Api
from tests.platform.test_datasets_api import create, files, get
from tests.platform.test_execution import node


def load_report(api: Api, token: str, name: str, load: dict[str, Any], **fields: Any) -> None:
    body = {"bytes_done": 0, "bytes_total": 3000, "files_done": 0, "files_total": 3, **fields}
    r = api.call("POST", f"/api/v1/nodes/{name}/loads/{load['id']}", token=token, json=body)
    assert r.status_code == 204, r.text


def caches(api: Api, token: str, name: str, dataset_id: str, cached: int, count: int) -> None:
    body = {
        "caches": [{"dataset_id": dataset_id, "cached_bytes": cached, "cached_files": count, "local_hits": 3}]
    }
    r = api.call("POST", f"/api/v1/nodes/{name}/caches", token=token, json=body)
    assert r.status_code == 200, r.text


def test_a_load_on_two_replicas(api: Api, tmp_path: Path) -> None:
    tokens = {n: node(api, n) for n in ("n1", "n2", "n3")}
    create(api, "d", f"file://{files(tmp_path / 'data')}", cache={"replicas": 2})
    list_sources(api.db)
    load = api.call("POST", "/api/v1/datasets/d/loads").json()
    assert [n["node"] for n in load["nodes"]] == ["n1", "n2"]  # as many Ready nodes as replicas
    work = api.call("GET", "/api/v1/nodes/n1/loads", token=tokens["n1"]).json()
    assert [w["dataset"] for w in work] == ["d"] and len(work[0]["files"]) == 3
    assert api.call("GET", "/api/v1/nodes/n3/loads", token=tokens["n3"]).json() == []
    # another node's token cannot read n1's work (it carries credentials)
    assert api.call("GET", "/api/v1/nodes/n1/loads", token=tokens["n3"]).status_code == 403

    load_report(api, tokens["n1"], "n1", load, state="Running", bytes_done=1000, files_done=1)
    loads = api.call("GET", "/api/v1/datasets/d/loads").json()
    assert (
        loads[0]["state"] == "Running" and loads[0]["bytes_done"] == 1000 and loads[0]["bytes_total"] == 6000
    )
    assert 16 < loads[0]["percent"] < 17
    assert get(api, "d")["status"]["phase"] == "Loading"

    def progress() -> list[str]:
        events = api.call("GET", "/api/v1/events", params={"kind": "dataset"}).json()
        return [e["message"] for e in events if e["reason"] == "LoadProgress"]

    assert progress() == []  # 1000 of 6000 bytes: no quarter passed yet
    load_report(api, tokens["n2"], "n2", load, state="Running", bytes_done=1500, files_done=1)
    messages = progress()  # 2500 of 6000: the first quarter passed
    assert len(messages) == 1, messages
    assert messages[0].startswith("load 1: 42% (2500 of 6000 bytes, 2 of 6 files), eta "), messages
    # half cached on one node is not Ready, however the load goes
    caches(api, tokens["n1"], "n1", get(api, "d")["id"], 1500, 1)
    assert get(api, "d")["status"]["phase"] == "Loading"
    load_report(api, tokens["n1"], "n1", load, state="Succeeded", bytes_done=3000, files_done=3)
    caches(api, tokens["n1"], "n1", get(api, "d")["id"], 3000, 3)
    assert get(api, "d")["status"]["phase"] == "Loading"  # one replica of two
    load_report(api, tokens["n2"], "n2", load, state="Succeeded", bytes_done=3000, files_done=3)
    caches(api, tokens["n2"], "n2", get(api, "d")["id"], 3000, 3)
    status = get(api, "d")["status"]
    assert status["phase"] == "Ready" and status["cached_percent"] == 100 and status["hit_ratio"] == 1.0
    assert api.call("GET", "/api/v1/datasets/d/loads").json()[0]["state"] == "Succeeded"
    assert api.call("GET", "/api/v1/nodes/n1/loads", token=tokens["n1"]).json() == []


def test_one_failed_node_fails_the_load(api: Api, tmp_path: Path) -> None:
    token = node(api, "n1")
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    load = api.call("POST", "/api/v1/datasets/d/loads").json()
    load_report(api, token, "n1", load, state="Failed", message="no room for 3000 more bytes")
    failed = api.call("GET", "/api/v1/datasets/d/loads").json()[0]
    assert failed["state"] == "Failed" and failed["message"] == "on n1: no room for 3000 more bytes"
    assert get(api, "d")["status"]["phase"] == "NotCached"
    events = api.call("GET", "/api/v1/events", params={"kind": "dataset"}).json()
    assert any(e["reason"] == "LoadFailed" and "no room" in e["message"] for e in events)


def test_no_ready_node_no_load(api: Api, tmp_path: Path) -> None:
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    r = api.call("POST", "/api/v1/datasets/d/loads")
    assert r.status_code == 409 and "no Ready node" in r.text


def test_a_loading_node_is_told_which_peers_hold_the_dataset(api: Api, tmp_path: Path) -> None:
    from tessera.datacache.peers import peer_token

    inventory = {"gpus": [], "cpu": 8, "memory": "32Gi", "simulated": True}
    tokens = {}
    for name in ("n1", "n2"):
        tokens[name] = api.user(f"agent-{name}", role=None, scopes=["node"])
        body = {
            "name": name,
            "inventory": inventory,
            "agent_url": f"http://127.0.0.1:9{name[1]}00",
            "agent_secret": f"secret-of-{name}-0123456789",
        }
        assert api.call("POST", "/api/v1/nodes", token=tokens[name], json=body).status_code == 200
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    dataset_id = get(api, "d")["id"]
    caches(api, tokens["n1"], "n1", dataset_id, 1000, 1)
    work = api.call("GET", f"/api/v1/nodes/n2/datasets/{dataset_id}", token=tokens["n2"]).json()
    assert work["peers"] == [
        {"node": "n1", "url": "http://127.0.0.1:9100", "token": peer_token("secret-of-n1-0123456789")}
    ]
    assert "secret-of-n1" not in str(work)  # the read token, never the agent's secret
    mine = api.call("GET", f"/api/v1/nodes/n1/datasets/{dataset_id}", token=tokens["n1"]).json()
    assert mine["peers"] == []  # not itself


def test_a_cron_schedule_starts_loads_when_due(api: Api, tmp_path: Path) -> None:
    from datetime import timedelta

    from tessera.platform.controllers.datasets import scheduled_loads
    from tessera.platform.store.types import utcnow

    node(api, "n1")
    create(api, "d", f"file://{files(tmp_path / 'data')}", load_schedule="*/5 * * * *")
    list_sources(api.db)
    now = utcnow()
    assert scheduled_loads(api.db, now=now - timedelta(hours=1)) == 0  # not due before it existed
    assert scheduled_loads(api.db, now=now + timedelta(minutes=6)) == 1
    assert scheduled_loads(api.db, now=now + timedelta(minutes=7)) == 0  # not over a live load
    loads = api.call("GET", "/api/v1/datasets/d/loads").json()
    assert [(x["number"], x["trigger"]) for x in loads] == [(1, "schedule")]


def test_dataset_metrics(api: Api, tmp_path: Path) -> None:
    token = node(api, "n1")
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    caches(api, token, "n1", get(api, "d")["id"], 1500, 1)
    metrics_token = api.user("scraper", role=None, scopes=["metrics"])
    text = api.call("GET", "/metrics", token=metrics_token).text
    assert 'tessera_dataset_bytes{dataset="d",project="default"} 3000.0' in text
    assert 'tessera_dataset_cached_percent{dataset="d",node="n1",project="default"} 50.0' in text
    assert 'tessera_dataset_reads{dataset="d",from="local",node="n1",project="default"} 3.0' in text


def test_a_deleted_dataset_is_named_back_to_the_node(api: Api, tmp_path: Path) -> None:
    token = node(api, "n1")
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    dataset_id = get(api, "d")["id"]
    assert api.call("DELETE", "/api/v1/datasets/d").status_code == 204
    body = {"caches": [{"dataset_id": dataset_id, "cached_bytes": 10, "cached_files": 1}]}
    r = api.call("POST", "/api/v1/nodes/n1/caches", token=token, json=body)
    assert r.status_code == 200 and r.json() == {"written": 0, "gone": [dataset_id]}


def test_a_subset_load_takes_only_the_files_it_names(api: Api, tmp_path: Path) -> None:
    token = node(api, "n1")
    create(api, "d", f"file://{files(tmp_path / 'data')}")
    list_sources(api.db)
    none = api.call("POST", "/api/v1/datasets/d/loads", json={"include": ["nothing-*"]})
    assert none.status_code == 422 and none.json()["errors"][0]["field"] == "include", none.text
    load = api.call("POST", "/api/v1/datasets/d/loads", json={"include": ["part-1*"]}).json()
    assert load["include"] == ["part-1*"] and load["bytes_total"] == 1000 and load["files_total"] == 1
    work = api.call("GET", "/api/v1/nodes/n1/loads", token=token).json()
    assert [f[0] for f in work[0]["files"]] == ["part-1.bin"]
    load_report(api, token, "n1", load, state="Succeeded", bytes_done=1000, bytes_total=1000, files_total=1)
    caches(api, token, "n1", get(api, "d")["id"], 1000, 1)
    assert get(api, "d")["status"]["phase"] == "NotCached"  # a subset is not the dataset: never Ready
