"""Datasets, loads and secrets through the API, with the control plane's source listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.platform.controllers.datasets import list_sources
from tests.conftest import Api
from tests.datacache.sources import http_server
from tests.pg import free_port
from tests.platform.test_execution import node


def files(root: Path, count: int = 3, size: int = 1000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"part-{i}.bin").write_bytes(bytes([i]) * size)
    return root


def create(api: Api, name: str, source: str, **fields: Any) -> Any:
    return api.call("POST", "/api/v1/datasets", json={"name": name, "source": source, **fields})


def get(api: Api, name: str) -> dict[str, Any]:
    r = api.call("GET", f"/api/v1/datasets/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_secrets_are_never_echoed(api: Api) -> None:
    body = {
        "name": "s3-creds",
        "data": {"aws_access_key_id": "AKIA-LEAK", "aws_secret_access_key": "TOPSECRET"},
    }
    r = api.call("POST", "/api/v1/secrets", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["keys"] == ["aws_access_key_id", "aws_secret_access_key"]
    listed = api.call("GET", "/api/v1/secrets").text
    changes = api.call("GET", "/api/v1/watch", params={"since": 0, "timeout": 0.5}).text
    assert "s3-creds" in changes  # the feed carries the secret: keys only
    for text in (r.text, listed, changes):
        assert "TOPSECRET" not in text and "AKIA-LEAK" not in text
    assert api.call("POST", "/api/v1/secrets", json=body).status_code == 409
    bad = api.call("POST", "/api/v1/secrets", json={"name": "x", "data": {"bad key": "v"}})
    assert bad.status_code == 422 and "data" in bad.text and "TOPSECRET" not in bad.text


def test_bad_datasets_are_refused_naming_the_field(api: Api, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"source": "bucket/path"}, "source"),
        ({"source": "ftp://host/x"}, "source"),
        ({"source": "s3://b/p", "credentials": "nope"}, "credentials"),
        ({"source": "s3://b/p", "load_schedule": "daily"}, "load_schedule"),
        ({"source": "s3://b/p", "include": ["/abs/*"]}, "include"),
        ({"source": "s3://b/p", "endpoint_url": "localhost:9000"}, "endpoint_url"),
        ({"source": "s3://b/p", "cache": {"low_watermark": 0.9, "high_watermark": 0.5}}, "cache"),
    ]
    for fields, field in cases:
        r = api.call("POST", "/api/v1/datasets", json={"name": "d", **fields})
        assert r.status_code == 422, (fields, r.text)
        assert any(e["field"].startswith(field) for e in r.json()["errors"]), (field, r.json())
    assert api.call("GET", "/api/v1/datasets").json() == []  # nothing stored
    ok = create(api, "d", f"file://{files(tmp_path / 'data')}")
    assert ok.status_code == 201, ok.text
    assert create(api, "d", "s3://b/p").status_code == 409


def test_listing_a_local_source_and_loads(api: Api, tmp_path: Path) -> None:
    node(api, "n1")
    root = files(tmp_path / "data", count=3, size=1000)
    assert create(api, "local", f"file://{root}", include=["*.bin"]).status_code == 201
    assert get(api, "local")["status"]["phase"] == "Pending"
    assert list_sources(api.db) == 1
    status = get(api, "local")["status"]
    assert status["phase"] == "NotCached" and status["total_bytes"] == 3000 and status["total_files"] == 3
    assert status["cached_percent"] == 0 and status["hit_ratio"] is None
    assert list_sources(api.db) == 0  # listed once

    load = api.call("POST", "/api/v1/datasets/local/loads", json={})
    assert load.status_code == 201, load.text
    assert load.json()["state"] == "Pending" and load.json()["number"] == 1
    again = api.call("POST", "/api/v1/datasets/local/loads")
    assert again.json()["id"] == load.json()["id"]  # one load at a time
    unknown = api.call("POST", "/api/v1/datasets/local/loads", json={"nodes": ["ghost"]})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "nodes", unknown.text
    assert [x["number"] for x in api.call("GET", "/api/v1/datasets/local/loads").json()] == [1]


def test_unreadable_and_too_large_sources_fail_with_a_reason(api: Api, tmp_path: Path) -> None:
    root = files(tmp_path / "data", count=2, size=1024 * 1024)
    with http_server(root, token="right") as url:
        api.call("POST", "/api/v1/secrets", json={"name": "web", "data": {"token": "wrong"}})
        create(api, "denied", f"{url}/", credentials="web")
        create(api, "gone", f"http://127.0.0.1:{free_port()}/data/")
        create(api, "big", f"file://{root}", cache={"capacity_per_node": "1Mi"})
        assert list_sources(api.db, timeout=20) == 3
    denied, gone, big = (get(api, n)["status"] for n in ("denied", "gone", "big"))
    assert denied["phase"] == "Failed" and "denied: check the dataset's credentials" in denied["message"]
    assert "wrong" not in denied["message"]
    assert gone["phase"] == "Failed" and "unreachable" in gone["message"]
    assert big["phase"] == "Failed" and "larger than its cache capacity per node" in big["message"]
    events = api.call("GET", "/api/v1/events", params={"kind": "dataset"}).json()
    assert {e["reason"] for e in events} >= {"Created", "SourceUnreadable", "TooLarge"}
    refused = api.call("POST", "/api/v1/datasets/big/loads")
    assert refused.status_code == 409 and "larger than its cache" in refused.text


def test_members_see_their_projects_datasets_only(api: Api, tmp_path: Path) -> None:
    create(api, "mine", f"file://{files(tmp_path / 'd')}")
    api.call("POST", "/api/v1/projects", json={"name": "other", "queues": ["default"]})
    outsider = api.user("outsider", project="other")
    assert api.call("GET", "/api/v1/datasets", token=outsider).json() == []
    feed = api.call("GET", "/api/v1/watch", params={"since": 0, "timeout": 0.5}, token=outsider).text
    assert (
        "mine" not in feed
        and "mine" in api.call("GET", "/api/v1/watch", params={"since": 0, "timeout": 0.5}).text
    )
    assert api.call("GET", "/api/v1/datasets/mine", token=outsider).status_code == 403
    assert api.call("DELETE", "/api/v1/datasets/mine", token=outsider).status_code == 403
    assert api.call("DELETE", "/api/v1/datasets/mine").status_code == 204
    assert api.call("GET", "/api/v1/datasets/mine").status_code == 404
