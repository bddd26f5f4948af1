"""What the gateway tells the control plane, and what ``/metrics`` exposes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.api.serving import GatewayReport, RevisionSample
from tests.gateway.conftest import GatewayProcess
from tests.gateway.servers import Backends, route, wait_until

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer svc-token"}


def _sample(report: GatewayReport, service: str, revision: int = 1) -> RevisionSample:
    found = [
        s
        for s in report.revisions
        if s.service_id == route(service, []).service_id and s.revision == revision
    ]
    assert len(found) == 1, report
    return found[0]


def test_report_contents(gateway: GatewayProcess, backends: Backends) -> None:
    a, b = backends.add("a"), backends.add("b")
    revision = gateway.apply(
        route("rep", [(1, 100, [a.route_replica(), b.route_replica()])]),
        route("idle", [(1, 100, [])]),
    )
    plane = gateway.control
    start = plane.report_count()
    with ThreadPoolExecutor(4) as pool, gateway.client() as client:
        parked = [
            pool.submit(client.get, "/serve/rep/block", params={"key": "k"}, headers=AUTH) for _ in range(3)
        ]
        wait_until(lambda: a.active + b.active == 3)
        # a report while all three are in flight, then the next: all three spanned its window
        index = plane.find_report(lambda r: sum(s.in_flight for s in r.replicas) == 3, after=start)
        window = plane.wait_report(lambda r: True, after=index + 1)
        sample = _sample(window, "rep")
        assert sample.concurrency == pytest.approx(3.0, abs=1e-3)
        assert sample.held == 0 and sample.requests == 0
        assert {s.replica_id: s.in_flight for s in window.replicas} == {a.id: a.active, b.id: b.active}
        backends.release("k")
        assert all(f.result(30).status_code == 200 for f in parked)

    def settled() -> list[GatewayReport]:
        reports = plane.all_reports()[start:]
        done = sum(_sample(r, "rep").requests for r in reports)
        return reports if done == 3 and _sample(reports[-1], "rep").concurrency == 0 else []

    reports = wait_until(settled, what="the three requests reported")
    samples = [_sample(r, "rep") for r in reports]
    assert sum(s.errors for s in samples) == 0
    latencies = [ms for s in samples for ms in s.latencies_ms]
    assert len(latencies) == 3 and all(ms > 0 for ms in latencies)
    last = reports[-1]
    assert last.gateway == "gw-test"
    assert last.url == gateway.url
    assert last.routes_revision == revision
    assert last.interval_s > 0
    assert {s.replica_id: (s.ready, s.in_flight) for s in last.replicas} == {a.id: (True, 0), b.id: (True, 0)}
    idle = _sample(last, "idle")  # an idle revision is reported too, with zeros
    assert (idle.concurrency, idle.held, idle.requests, idle.errors, idle.latencies_ms) == (0, 0, 0, 0, [])


def test_held_requests_count_in_concurrency(gateway: GatewayProcess) -> None:
    gateway.apply(route("wait", [(1, 100, [])]))
    plane = gateway.control
    start = plane.report_count()
    with ThreadPoolExecutor(2) as pool, gateway.client() as client:
        pending = [pool.submit(client.get, "/serve/wait/", headers=AUTH) for _ in range(2)]
        index = plane.find_report(lambda r: _sample(r, "wait").held == 2, after=start)
        window = plane.wait_report(lambda r: True, after=index + 1)
        assert _sample(window, "wait").held == 2
        assert _sample(window, "wait").concurrency == pytest.approx(2.0, abs=1e-3)
        plane.set_routes()  # the service goes: its held requests fail
        assert [f.result(30).status_code for f in pending] == [503, 503]


def test_metrics_endpoint(gateway: GatewayProcess, backends: Backends) -> None:
    replica = backends.add("a")
    gateway.apply(route("prom", [(1, 100, [replica.route_replica()])]))
    with gateway.client() as client:
        for code in ("200", "200", "500"):
            client.get("/serve/prom/status", params={"code": code}, headers=AUTH)
        client.get("/serve/prom/", headers={"Authorization": "Bearer nope"})
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    labels = (("revision", "1"), ("service", "prom"))
    assert values[("tessera_gateway_requests_total", (("code", "2xx"), *labels))] == 2
    assert values[("tessera_gateway_requests_total", (("code", "5xx"), *labels))] == 1
    assert values[("tessera_gateway_request_duration_seconds_count", labels)] == 3
    assert values[("tessera_gateway_in_flight", labels)] == 0
    assert values[("tessera_gateway_held", labels)] == 0
    assert values[("tessera_gateway_rejected_total", (("reason", "unauthorized"),))] == 1
    assert values[("tessera_gateway_reports_total", (("outcome", "ok"),))] >= 1
