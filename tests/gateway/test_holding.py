"""Requests wait at the gateway while their revision has no ready replica (scale from zero)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tessera.api.serving import GatewayReport
from tests.gateway.conftest import GatewayProcess
from tests.gateway.servers import Backends, route, wait_until

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer svc-token"}


def _held(report: GatewayReport, revision: int = 1) -> int:
    return sum(s.held for s in report.revisions if s.revision == revision)


def test_held_until_a_replica_is_added_and_passes_readiness(
    gateway: GatewayProcess, backends: Backends
) -> None:
    gateway.apply(route("cold", [(1, 100, [])]))
    with ThreadPoolExecutor(2) as pool, gateway.client() as client:
        pending = pool.submit(client.get, "/serve/cold/hello", headers={**AUTH, "X-Request-Id": "held-1"})
        start = gateway.control.report_count()
        gateway.control.wait_report(lambda r: _held(r) == 1, after=start)
        assert not pending.done()

        replica = backends.add("late", ready=False)  # loading: /ready answers 503
        gateway.control.set_routes(route("cold", [(1, 100, [replica.route_replica()])]))
        wait_until(lambda: replica.probes(503) >= 3, what="probes answered 503")
        assert not pending.done()
        assert replica.requests == []  # readiness gates traffic

        replica.ready = True
        response = pending.result(30)
    assert response.status_code == 200
    assert response.headers["x-tessera-replica"] == str(replica.id)
    kinds = [(kind, value) for kind, value in replica.events]
    assert kinds.index(("request", "held-1")) > kinds.index(("probe", 200))
    after = gateway.control.report_count()
    gateway.control.wait_report(lambda r: _held(r) == 0, after=after)


def test_unready_replica_gets_no_traffic_until_ready(gateway: GatewayProcess, backends: Backends) -> None:
    warm, loading = backends.add("warm"), backends.add("loading", ready=False)
    service = route("gated", [(1, 100, [warm.route_replica(), loading.route_replica()])])
    gateway.control.set_routes(service)
    wait_until(lambda: loading.probes(503) >= 2 and warm.probes(200) >= 1, what="probes")
    with gateway.client() as client:
        for _ in range(20):
            assert client.get("/serve/gated/", headers=AUTH).headers["x-tessera-replica"] == str(warm.id)
        assert loading.requests == []
        loading.ready = True
        gateway.apply(service)  # waits for both to report ready
        seen = {client.get("/serve/gated/", headers=AUTH).headers["x-tessera-replica"] for _ in range(20)}
    assert seen == {str(warm.id), str(loading.id)}


def test_hold_timeout_is_503_with_retry_after(gateway: GatewayProcess) -> None:
    gateway.apply(route("empty", [(1, 100, [])], hold_timeout_s=0.3))
    with gateway.client() as client:
        response = client.get("/serve/empty/", headers=AUTH)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 503 and "hold timeout" in problem["detail"]
    start = 0
    gateway.control.wait_report(
        lambda r: any(s.revision == 1 and s.errors == 1 and s.requests == 1 for s in r.revisions), after=start
    )


def test_client_leaving_while_held_is_no_longer_held(gateway: GatewayProcess, backends: Backends) -> None:
    gateway.apply(route("gone", [(1, 100, [])]))
    start = gateway.control.report_count()
    with gateway.client(timeout=httpx.Timeout(30, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/serve/gone/", headers=AUTH)
    index = gateway.control.find_report(lambda r: _held(r) == 1, after=start)
    gateway.control.wait_report(lambda r: _held(r) == 0, after=index + 1)
    replica = backends.add("late")
    gateway.apply(route("gone", [(1, 100, [replica.route_replica()])]))
    assert replica.requests == []  # nothing was forwarded for the client that left


def test_a_revision_not_ready_yet_has_its_share_served_by_a_ready_one(
    gateway: GatewayProcess, backends: Backends
) -> None:
    # revision 2 has all the traffic but is still loading; revision 1 (0%) is ready and keeps
    # serving until revision 2 is: no request waits, none is refused
    old = backends.add("old")
    new = backends.add("new", ready=False)
    gateway.apply(
        route("moving", [(1, 0, [old.route_replica()]), (2, 100, [new.route_replica()])]), ready=False
    )
    wait_until(lambda: new.probes(503) >= 2, what="the new revision probed")
    with gateway.client() as client:
        answers = [client.get("/serve/moving/x", headers=AUTH) for _ in range(5)]
    assert [(a.status_code, a.headers["x-tessera-revision"]) for a in answers] == [(200, "1")] * 5
    new.ready = True
    wait_until(
        lambda: (
            (r := httpx.get(f"{gateway.url}/serve/moving/x", headers=AUTH)).headers.get("x-tessera-revision")
            == "2"
            and r
        ),
        what="traffic moved to revision 2 once ready",
    )
