"""Serving end to end: `tessera up` with its gateway and agent, the example model server as
replicas on simulated GPU slices, real HTTP through the gateway."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home", gateway=True).start()
    yield c
    c.stop()
    from tessera.cli.local import _live_shims

    # `tessera down` stops services' replicas too (they come back at the next `tessera up`)
    assert not _live_shims(c.home / "node" / "jobs"), "a replica outlived tessera down"


def serve(cluster: LocalCluster, name: str, *flags: str) -> dict[str, Any]:
    r = cluster.cli(
        "serve",
        "custom",
        "--name",
        name,
        "--gpu-memory",
        "8Gi",
        "--readiness-path",
        "/ready",
        "-e",
        "LOAD_SECONDS=1",
        *flags,
        "-o",
        "json",
        "--",
        "python",
        "examples/model_server.py",
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def service(cluster: LocalCluster, name: str) -> dict[str, Any]:
    r = cluster.cli("serve", "get", name, "-o", "json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def url_of(cluster: LocalCluster, name: str) -> str:
    return str(wait_until(lambda: service(cluster, name)["status"]["url"], 30, what="the gateway's url"))


def ready(svc: dict[str, Any], revision: int | None = None) -> int:
    return sum(
        1
        for p in svc["replicas"]
        if p["state"] == "Ready" and (revision is None or p["revision_number"] == revision)
    )


class Load:
    """Clients sending requests in a loop until stopped; every outcome is kept."""

    def __init__(self, url: str, clients: int, token: str | None = None, path: str = "predict") -> None:
        self.url, self.path = url, path
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.stop_flag = threading.Event()
        self.outcomes: list[tuple[int, str]] = []  # (status, revision)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        body = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
        with httpx.Client(timeout=120, headers=self.headers) as http:
            while not self.stop_flag.is_set():
                try:
                    r = http.post(self.url + self.path, json=body)
                    outcome = (r.status_code, r.headers.get("x-tessera-revision", ""))
                except httpx.TransportError as exc:
                    outcome = (0, type(exc).__name__)
                with self.lock:
                    self.outcomes.append(outcome)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=130)

    def failures(self) -> list[tuple[int, str]]:
        with self.lock:
            return [o for o in self.outcomes if o[0] != 200]


def test_scales_from_zero_to_two_under_load_and_back_to_zero(cluster: LocalCluster) -> None:
    created = serve(
        cluster,
        "echo",
        "--min-replicas",
        "0",
        "--max-replicas",
        "2",
        "--target-concurrency",
        "2",
        "--stable-window",
        "8s",
        "--panic-window",
        "2s",
        "--scale-to-zero-grace",
        "4s",
        "-e",
        "WORK_MS=200",
    )
    token = created["token"]
    url = url_of(cluster, "echo")
    assert url.endswith("/serve/echo/")
    assert service(cluster, "echo")["replicas"] == []  # nothing runs before the first request
    assert httpx.post(url + "predict", json={"inputs": [[1, 2, 3, 4]]}, timeout=10).status_code == 401
    # the first request is held while a replica starts from zero, then answered
    started = time.monotonic()
    r = httpx.post(
        url + "predict",
        json={"inputs": [[1, 2, 3, 4]]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    cold = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"][0]) == 3 and r.headers["x-tessera-revision"] == "1"
    assert cold >= 1.0  # it waited for the model to load (LOAD_SECONDS=1)
    # six clients at 200 ms each: a concurrency of ~6 over a target of 2 per replica wants 3, capped at 2
    with Load(url, 6, token) as load:
        wait_until(lambda: ready(service(cluster, "echo")) == 2, 90, what="two ready replicas")
        time.sleep(2)
    assert load.failures() == [] and len(load.outcomes) > 20
    # idle: after the stable window and the grace period, back to zero, draining first
    svc = wait_until(
        lambda: (
            (s := service(cluster, "echo"))["status"]["desired_replicas"] == 0
            and all(p["state"] in ("Stopped", "Failed") for p in s["replicas"])
            and s
        ),
        90,
        what="scale to zero",
    )
    assert [p["state"] for p in svc["replicas"]] == ["Stopped", "Stopped"]
    events = cluster.api("GET", "/api/v1/events", params={"object_id": svc["id"], "limit": 500}).json()
    scaled = [e["message"] for e in events if e["reason"] == "Scaled"]
    assert any("0 -> 1" in m for m in scaled) and any("-> 2" in m for m in scaled), scaled
    assert any("-> 0" in m for m in scaled), scaled
    revision = svc["revisions"][0]
    assert revision["cold_start_s"] is not None and revision["metrics"]["requests"] > 20
    assert revision["metrics"]["p50_ms"] >= 200 and revision["metrics"]["errors"] == 0
    # the replicas' workloads are listed only on request, ended
    jobs = cluster.api("GET", "/api/v1/jobs", params={"services": "true"}).json()["items"]
    assert len(jobs) == 2 and {j["status"]["state"] for j in jobs} == {"CANCELLED"}
    assert cluster.api("GET", "/api/v1/jobs").json()["items"] == []


def test_canary_split_then_promote_without_losing_requests(cluster: LocalCluster) -> None:
    serve(cluster, "clf", "--replicas", "1", "--public", "--version", "v1")
    url = url_of(cluster, "clf")
    wait_until(lambda: ready(service(cluster, "clf")) == 1, 60, what="revision 1 ready")
    r = cluster.cli("serve", "update", "clf", "--canary", "20", "--version", "v2", "-e", "LOAD_SECONDS=1")
    assert r.returncode == 0, r.stderr
    assert "r1:80%, r2:20%" in r.stdout
    wait_until(lambda: ready(service(cluster, "clf"), 2) == 1, 60, what="revision 2 ready")
    counts: Counter[str] = Counter()
    with httpx.Client(timeout=30) as http:
        for _ in range(1000):
            answer = http.post(url + "predict", json={"inputs": [[1, 2, 3, 4]]})
            assert answer.status_code == 200, answer.text
            counts[answer.json()["revision"]] += 1
    assert 150 <= counts["2"] <= 250, counts  # 20% +- 5% of 1,000
    assert counts["1"] + counts["2"] == 1000
    table = cluster.cli("serve", "get", "clf")
    assert "20%" in table.stdout and "80%" in table.stdout
    # promote under load: revision 1 drains (no new requests), then stops; nothing is lost
    with Load(url, 4) as load:
        time.sleep(1)
        assert cluster.cli("serve", "promote", "clf").returncode == 0
        wait_until(
            lambda: any(
                p["revision_number"] == 1 and p["state"] == "Stopped"
                for p in service(cluster, "clf")["replicas"]
            ),
            90,
            what="revision 1 drained and stopped",
        )
        before = len(load.outcomes)
        time.sleep(1)
    assert load.failures() == [], Counter(load.failures())
    after = load.outcomes[before:]
    assert after and all(rev == "2" for _, rev in after)
    svc = service(cluster, "clf")
    assert svc["status"]["traffic"] == [{"revision": 2, "percent": 100}]
    assert cluster.cli("serve", "rollback", "clf").returncode == 0
    assert service(cluster, "clf")["status"]["traffic"] == [{"revision": 1, "percent": 100}]


def test_a_replica_crash_loses_only_its_in_flight_requests_and_is_replaced(cluster: LocalCluster) -> None:
    serve(cluster, "crash", "--replicas", "2", "--public", "-e", "WORK_MS=50")
    url = url_of(cluster, "crash")
    svc = wait_until(lambda: (s := service(cluster, "crash")) and ready(s) == 2 and s, 60, what="2 ready")
    victim = svc["replicas"][0]
    clients = 4
    with Load(url, clients) as load:
        time.sleep(2)
        state_files = list((cluster.home / "node" / "jobs" / victim["job_id"]).glob("*/state.json"))
        pid = int(json.loads(state_files[0].read_text())["pid"])
        os.kill(pid, signal.SIGKILL)
        crashed_at = len(load.outcomes)
        time.sleep(3)
        wait_until(
            lambda: (
                ready(s := service(cluster, "crash")) == 2
                and any(p["state"] == "Failed" for p in s["replicas"])
            ),
            90,
            what="the failed replica replaced",
        )
        time.sleep(1)
    failures = load.failures()
    # only requests in flight on it when it died can fail: each client has at most one in flight
    assert len(failures) <= clients, Counter(failures)
    assert len(load.outcomes) > crashed_at + 50
    svc = service(cluster, "crash")
    failed = [p for p in svc["replicas"] if p["state"] == "Failed"]
    assert [p["id"] for p in failed] == [victim["id"]]
    events = cluster.api("GET", "/api/v1/events", params={"object_id": svc["id"], "limit": 500}).json()
    assert any(e["reason"] == "ReplicaFailed" for e in events)
    logs = cluster.cli("serve", "logs", "crash")
    assert logs.returncode == 0 and "model loaded" in logs.stdout
