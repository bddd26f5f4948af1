"""Routing through a real gateway process: forwarding, auth, the revision split, the replica choice."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.conftest import GatewayProcess
from tests.gateway.servers import Backends, route, wait_until

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer svc-token"}


@pytest.mark.timeout(60)
def test_forwards_path_query_headers_and_body(gateway: GatewayProcess, backends: Backends) -> None:
    replica = backends.add("a")
    gateway.apply(route("echo", [(1, 100, [replica.route_replica()])]))
    with gateway.client() as client:
        response = client.post(
            "/serve/echo/v1/chat%20x/completions?stream=false&x=%2F",
            content=b"hello body",
            headers={
                **AUTH,
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "Keep-Alive": "timeout=5",
                "X-Forwarded-For": "10.0.0.9",
            },
        )
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/v1/chat%20x/completions?stream=false&x=%2F"
    assert echoed["body_len"] == len(b"hello body")
    headers = echoed["headers"]
    assert headers["x-custom"] == "kept"
    assert "authorization" not in headers
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert headers["x-forwarded-host"] == gateway.url.removeprefix("http://")
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"] == replica.endpoint
    assert response.headers["x-tessera-revision"] == "1"
    assert response.headers["x-tessera-replica"] == str(replica.id)
    assert response.headers["x-replica-name"] == "a"
    assert response.headers["content-type"].startswith("application/json")

    with gateway.client() as client:  # no rest: the replica's root
        root = client.get("/serve/echo", headers=AUTH)
    assert root.status_code == 200 and root.json()["path"] == "/"


def test_auth(gateway: GatewayProcess, backends: Backends) -> None:
    replica = backends.add("a")
    gateway.apply(
        route("private", [(1, 100, [replica.route_replica()])], token="right"),
        route("open", [(1, 100, [replica.route_replica()])], public=True, token=None),
    )
    with gateway.client() as client:
        missing = client.get("/serve/private/x")
        wrong = client.get("/serve/private/x", headers={"Authorization": "Bearer wrong"})
        basic = client.get("/serve/private/x", headers={"Authorization": "Basic cmlnaHQ="})
        right = client.get("/serve/private/x", headers={"Authorization": "Bearer right"})
        public = client.get("/serve/open/y")
        public_with_header = client.get("/serve/open/z", headers={"Authorization": "Bearer anything"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert (
            problem["status"] == 401
            and problem["title"] == "Unauthorized"
            and problem["type"] == "about:blank"
        )
    assert right.status_code == 200 and "authorization" not in right.json()["headers"]
    assert public.status_code == 200 and public.json()["path"] == "/y"
    assert public_with_header.status_code == 200
    assert "authorization" not in public_with_header.json()["headers"]
    assert [r["path"] for r in replica.requests] == ["/x", "/y", "/z"]  # refused ones never got there


def test_unknown_service_is_404(gateway: GatewayProcess) -> None:
    with gateway.client() as client:
        response = client.get("/serve/nope/anything", headers=AUTH)
        health = client.get("/healthz")
        elsewhere = client.get("/other")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "about:blank" and problem["title"] == "Not Found" and problem["status"] == 404
    assert "no service named 'nope'" in problem["detail"]
    assert health.status_code == 200 and health.text == "ok"
    assert elsewhere.status_code == 404


def test_split_sends_exactly_the_percent(gateway: GatewayProcess, backends: Backends) -> None:
    stable, canary = backends.add("stable"), backends.add("canary")
    gateway.apply(route("split", [(1, 80, [stable.route_replica()]), (2, 20, [canary.route_replica()])]))
    counts: collections.Counter[str] = collections.Counter()
    with gateway.client() as client:
        for _ in range(1000):
            response = client.get("/serve/split/", headers=AUTH)
            assert response.status_code == 200
            counts[response.headers["x-tessera-revision"]] += 1
    assert counts == {"1": 800, "2": 200}
    assert len(canary.requests) == 200


def test_least_in_flight(gateway: GatewayProcess, backends: Backends) -> None:
    a, b = backends.add("a"), backends.add("b")
    gateway.apply(route("busy", [(1, 100, [a.route_replica(), b.route_replica()])]))
    pool = ThreadPoolExecutor(8)
    client = gateway.client()
    parked = []
    try:

        def parked_at_replicas() -> int:
            return a.active + b.active

        for i in range(3):  # one at a time: each goes to a replica with the fewest in flight
            parked.append(pool.submit(client.get, "/serve/busy/block", params={"key": "park"}, headers=AUTH))
            wait_until(lambda: parked_at_replicas() == len(parked), what=f"{i + 1} requests at the replicas")
        assert {a.active, b.active} == {1, 2}
        lighter = a if a.active == 1 else b
        response = client.get("/serve/busy/", headers=AUTH)  # 2 vs 1: the lighter one
        assert response.status_code == 200
        assert response.headers["x-tessera-replica"] == str(lighter.id)
        parked.append(pool.submit(client.get, "/serve/busy/block", params={"key": "park"}, headers=AUTH))
        wait_until(lambda: a.active + b.active == 4)
        assert (a.active, b.active) == (2, 2)
    finally:
        backends.release("park")
        for future in parked:
            assert future.result(30).status_code == 200
        pool.shutdown()
        client.close()


def test_draining_replica_gets_no_new_requests(gateway: GatewayProcess, backends: Backends) -> None:
    live, draining = backends.add("live"), backends.add("draining")
    gateway.apply(route("drain", [(1, 100, [live.route_replica(), draining.route_replica()])]))
    with gateway.client() as client:
        seen = {client.get("/serve/drain/", headers=AUTH).headers["x-tessera-replica"] for _ in range(20)}
    assert seen == {str(live.id), str(draining.id)}  # both served while neither drained
    gateway.apply(route("drain", [(1, 100, [live.route_replica(), draining.route_replica(draining=True)])]))
    before = len(draining.requests)
    with gateway.client() as client:
        for _ in range(50):
            response = client.get("/serve/drain/", headers=AUTH)
            assert response.headers["x-tessera-replica"] == str(live.id)
    assert len(draining.requests) == before


def test_concurrent_requests_all_arrive(gateway: GatewayProcess, backends: Backends) -> None:
    replicas = [backends.add(f"r{i}") for i in range(3)]
    gateway.apply(route("many", [(1, 100, [r.route_replica() for r in replicas])]))
    lock = threading.Lock()
    statuses: collections.Counter[int] = collections.Counter()

    def work(i: int) -> None:
        with gateway.client() as client:
            for j in range(20):
                status = client.post(f"/serve/many/n/{i}/{j}", json={"i": i}, headers=AUTH).status_code
                with lock:
                    statuses[status] += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert statuses == {200: 160}
    assert all(r.requests for r in replicas)
