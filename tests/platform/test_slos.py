"""Golden-signal metrics of the real app and scheduling loop, and the SLO checker (docs/slos.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.metrics import API_BUCKETS, ApiMetrics, ApiMiddleware
from tessera.platform.slos import (
    SLOS,
    SLOResult,
    bucket_quantile,
    evaluate,
    parse,
    render_markdown,
)
from tessera.scheduler import model
from tests.conftest import Api, job_body
from tests.gateway.conftest import spawn_gateway
from tests.gateway.servers import Backends, FakeControlPlane, route
from tests.platform.test_execution import node

Labels = dict[str, str]


def scrape(api: Api) -> str:
    token = api.user("prom", role=None, scopes=["metrics"])
    r = api.call("GET", "/metrics", token=token)
    assert r.status_code == 200, r.text
    return r.text


def values(text: str, name: str) -> list[tuple[Labels, float]]:
    return [(s.labels, s.value) for s in parse(text) if s.name == name]


def value(text: str, name: str, **labels: str) -> float:
    found = [v for got, v in values(text, name) if all(got.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, values(text, name))
    return found[0]


def by_name(results: Sequence[SLOResult]) -> dict[str, SLOResult]:
    return {r.slo.name: r for r in results}


# --- the API's signals, from the real app


def test_api_requests_are_labelled_by_route_template_and_caller(api: Api) -> None:
    token = node(api, "n1")
    assert api.call("POST", "/api/v1/nodes/n1/heartbeat", token=token).status_code == 200
    assert api.call("POST", "/api/v1/nodes/n1/heartbeat", token=token).status_code == 200
    assert api.call("GET", "/api/v1/jobs/nope").status_code == 404
    assert api.client.get("/api/v1/jobs").status_code == 401
    assert api.client.get("/healthz").status_code == 200
    text = scrape(api)

    requests = "tessera_api_requests_total"
    heartbeat = "/api/v1/nodes/{name}/heartbeat"
    assert value(text, requests, route=heartbeat, caller="node", status_class="2xx", method="POST") == 2
    assert value(text, requests, route="/api/v1/jobs/{ref}", caller="admin", status_class="4xx") == 1
    assert value(text, requests, route="/api/v1/jobs", caller="anonymous", status_class="4xx") == 1
    assert value(text, requests, route="/healthz", caller="anonymous", status_class="2xx") == 1
    # the metrics token's own user creation went through as admin; only the scrape is "metrics",
    # and it is still in flight while it renders
    assert value(text, "tessera_api_inflight_requests") == 1
    duration = "tessera_api_request_duration_seconds_count"
    assert value(text, duration, route=heartbeat, caller="node", method="POST") == 2
    # raw paths never become label values
    routes = {labels["route"] for labels, _ in values(text, requests)}
    assert not any("n1" in r or "nope" in r for r in routes), routes
    # per node heartbeat age, read from the store at scrape time
    [(labels, age)] = values(text, "tessera_node_heartbeat_age_seconds")
    assert labels == {"node": "n1", "state": "Ready"} and age >= 0
    assert value(text, "tessera_db_pool_checked_out_connections") >= 0


def test_the_single_writer_is_timed(api: Api) -> None:
    import threading
    import time

    before = scrape(api)
    writes = value(before, "tessera_db_write_seconds_count")
    hold = threading.Event()

    def slow_writer() -> None:
        with api.db.write():
            hold.set()
            time.sleep(1.0)  # holds the writer slot (SQLite) while the submit below waits

    thread = threading.Thread(target=slow_writer)
    thread.start()
    hold.wait(5)
    assert api.call("POST", "/api/v1/jobs", json=job_body("timed")).status_code == 201
    thread.join()
    text = scrape(api)
    assert value(text, "tessera_db_write_seconds_count") >= writes + 2
    assert value(text, "tessera_db_write_seconds_bucket", le="+Inf") == value(
        text, "tessera_db_write_seconds_count"
    )
    waited = value(text, "tessera_db_write_wait_seconds_count")
    if api.db.is_sqlite:  # the submit queued for the slot behind the slow writer
        assert waited >= 1 and value(text, "tessera_db_write_wait_seconds_sum") >= 0.1
    else:  # no slot on PostgreSQL: nothing waits for it
        assert waited == 0


def test_server_errors_count_as_5xx_and_leave_nothing_in_flight() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    app.add_middleware(ApiMiddleware, api=ApiMetrics(registry))

    @app.get("/boom/{n}")
    async def boom(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    @app.get("/busy")
    async def busy() -> JSONResponse:
        return JSONResponse({"detail": "busy"}, status_code=503)

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom/1").status_code == 500
        assert client.get("/busy").status_code == 503
        assert client.get("/nowhere").status_code == 404
    text = generate_latest(registry).decode()
    requests = "tessera_api_requests_total"
    assert value(text, requests, route="/boom/{n}", status_class="5xx", caller="anonymous") == 1
    assert value(text, requests, route="/busy", status_class="5xx") == 1
    assert value(text, requests, route="unmatched", status_class="4xx") == 1
    assert value(text, "tessera_api_inflight_requests") == 0
    assert value(text, "tessera_api_open_responses") == 0
    result = by_name(evaluate(text))["api-errors"]
    assert result.value == pytest.approx(2 / 3) and result.passed is False


# --- the scheduler's signals


def test_a_cycle_that_binds_records_cycles_binds_admission_and_pending_depth(api: Api) -> None:
    node(api, "n1", gpus=1)
    for name in ("a", "b"):
        assert api.call("POST", "/api/v1/jobs", json=job_body(name, gpus=1)).status_code == 201
    queue = api.call("GET", "/api/v1/jobs/a").json()["queue"]
    metrics = api.client.app.state.metrics  # type: ignore[attr-defined]
    loop = SchedulingLoop(api.db, metrics=metrics.scheduler)
    loop.step()
    text = scrape(api)
    assert value(text, "tessera_scheduler_cycles_total") == 1
    assert value(text, "tessera_scheduler_binds_total") == 1  # one GPU: a binds, b waits
    assert value(text, "tessera_scheduler_cycle_seconds_count") == 1
    assert value(text, "tessera_scheduler_time_to_admit_seconds_count", queue=queue) == 1
    assert value(text, "tessera_scheduler_pending_jobs", queue=queue) == 2  # the cycle's snapshot
    assert value(text, "tessera_scheduler_last_cycle_timestamp_seconds") > 0
    assert values(text, "tessera_scheduler_failed_binds_total") == []
    loop.step()  # it bound last time, so it looks again: now only b is pending
    text = scrape(api)
    assert value(text, "tessera_scheduler_pending_jobs", queue=queue) == 1
    assert value(text, "tessera_scheduler_binds_total") == 1
    assert value(text, "tessera_scheduler_time_to_admit_seconds_count", queue=queue) == 1
    assert by_name(evaluate(text))["scheduler-cycle"].value is not None


class Broken:
    name = "broken"

    def cycle(self, snapshot: model.Snapshot) -> model.Decisions:
        raise RuntimeError("the scheduler failed")


def test_a_failed_pass_is_counted(api: Api) -> None:
    api.call("POST", "/api/v1/jobs", json=job_body("a", gpus=1))
    metrics = api.client.app.state.metrics  # type: ignore[attr-defined]
    loop = SchedulingLoop(api.db, Broken(), metrics=metrics.scheduler)
    with pytest.raises(RuntimeError):
        loop.step()
    text = scrape(api)
    assert value(text, "tessera_scheduler_failed_cycles_total") == 1
    assert value(text, "tessera_scheduler_cycles_total") == 0
    result = by_name(evaluate(text))["scheduler-errors"]
    assert result.passed is None  # no cycle completed: nothing to divide by


# --- the gateway's signals, from a real gateway process


@pytest.mark.timeout(60)
def test_gateway_counts_its_503s_before_routing(tmp_path: Path) -> None:
    plane, backends = FakeControlPlane(), Backends()
    gw = spawn_gateway(plane, tmp_path)
    try:
        replica = backends.add("a")
        gw.apply(route("lit", [(1, 100, [replica.route_replica()])]), route("dark", [(1, 0, [])]))
        auth = {"Authorization": "Bearer svc-token"}
        with gw.client() as client:
            assert client.get("/serve/lit/", headers=auth).status_code == 200
            assert client.get("/serve/dark/", headers=auth).status_code == 503
            assert client.get("/serve/none/", headers=auth).status_code == 404
            text = client.get("/metrics").text
    finally:
        assert gw.stop() == 0
        backends.close()
        plane.close()
    rejected = "tessera_gateway_rejected_total"
    assert value(text, rejected, reason="no_revision") == 1 and value(text, rejected, reason="unknown") == 1
    assert value(text, "tessera_gateway_requests_total", service="lit", code="2xx") == 1
    assert value(text, "tessera_gateway_in_flight", service="lit") == 0
    result = by_name(evaluate(text))["gateway-errors"]
    assert result.value == pytest.approx(1 / 3) and result.passed is False


# --- evaluate() over exposition text


def api_text(fast: int, slow: int, errors: int = 0, ok: int = 0, watches: int = 0) -> str:
    registry = CollectorRegistry()
    duration = Histogram(
        "tessera_api_request_duration_seconds",
        "",
        ["method", "route", "caller"],
        buckets=API_BUCKETS,
        registry=registry,
    )
    requests = Counter(
        "tessera_api_requests", "", ["method", "route", "status_class", "caller"], registry=registry
    )
    for _ in range(fast):
        duration.labels("GET", "/api/v1/jobs", "user").observe(0.008)
    for _ in range(slow):
        duration.labels("POST", "/api/v1/jobs", "admin").observe(2.0)
    for _ in range(watches):  # a watch stays open: never request latency
        duration.labels("GET", "/api/v1/watch", "user").observe(30.0)
    requests.labels("GET", "/api/v1/jobs", "2xx", "user").inc(ok)
    requests.labels("GET", "/api/v1/jobs", "5xx", "user").inc(errors)
    return generate_latest(registry).decode()


def test_p99_is_interpolated_from_buckets_summed_across_labels() -> None:
    # 99 of 100 in (5 ms, 10 ms]: rank 99 is that bucket's top
    fast = by_name(evaluate(api_text(fast=99, slow=1, watches=50)))["api-latency"]
    assert fast.value == pytest.approx(0.01) and fast.passed is True
    # 102: rank 100.98 falls 1.98 into the 3 of (1 s, 2.5 s]
    slow = by_name(evaluate(api_text(fast=99, slow=3)))["api-latency"]
    assert slow.value == pytest.approx(1.0 + 1.5 * 1.98 / 3) and slow.passed is False
    assert "FAIL" in render_markdown([slow]) and "1.99 s" in render_markdown([slow])


def test_bucket_quantile_edges() -> None:
    inf = float("inf")
    assert bucket_quantile(0.99, [(0.1, 0), (1.0, 0), (inf, 0)]) is None  # nothing observed
    assert bucket_quantile(0.5, [(0.1, 0), (1.0, 1), (inf, 10)]) == 1.0  # beyond: the top finite bound
    assert bucket_quantile(0.5, [(1.0, 10), (inf, 10)]) == pytest.approx(0.5)


def test_error_ratio_passes_at_the_objective_and_fails_past_it() -> None:
    at = by_name(evaluate(api_text(0, 0, errors=1, ok=999)))["api-errors"]
    assert at.value == pytest.approx(0.001) and at.passed is True
    past = by_name(evaluate(api_text(0, 0, errors=2, ok=998)))["api-errors"]
    assert past.value == pytest.approx(0.002) and past.passed is False
    assert by_name(evaluate(api_text(0, 0)))["api-errors"].status == "no data"


def test_a_baseline_leaves_only_the_window() -> None:
    before = api_text(fast=0, slow=100, errors=100)
    after = api_text(fast=1000, slow=100, errors=100, ok=1000)
    results = by_name(evaluate(after, baseline=before))
    assert results["api-errors"].value == 0 and results["api-errors"].passed is True
    assert results["api-latency"].passed is True
    assert by_name(evaluate(after))["api-errors"].passed is False  # since start: 100 of 1100


def test_gateway_errors_count_its_503s_before_routing() -> None:
    registry = CollectorRegistry()
    requests = Counter("tessera_gateway_requests", "", ["service", "revision", "code"], registry=registry)
    rejected = Counter("tessera_gateway_rejected", "", ["reason"], registry=registry)
    requests.labels("chat", "1", "2xx").inc(995)
    rejected.labels("unauthorized").inc(3)
    ok = by_name(evaluate(generate_latest(registry).decode()))["gateway-errors"]
    assert ok.value == 0 and ok.passed is True
    rejected.labels("no_revision").inc(2)
    requests.labels("chat", "1", "5xx").inc(4)
    bad = by_name(evaluate(generate_latest(registry).decode()))["gateway-errors"]
    assert bad.value == pytest.approx(6 / 1004) and bad.passed is False


def test_heartbeat_age_p99_is_across_nodes_and_gauges_ignore_the_baseline() -> None:
    def text(ages: list[float]) -> str:
        registry = CollectorRegistry()
        age = Gauge("tessera_node_heartbeat_age_seconds", "", ["node", "state"], registry=registry)
        for i, seconds in enumerate(ages):
            age.labels(f"n{i}", "Ready").set(seconds)
        return generate_latest(registry).decode()

    healthy = by_name(evaluate(text([1, 2, 4]), baseline=text([9, 9, 9])))["node-heartbeat-age"]
    assert healthy.value == 4 and healthy.passed is True
    stale = by_name(evaluate([text([1, 2, 30])]))["node-heartbeat-age"]
    assert stale.value == 30 and stale.passed is False


def test_every_slo_renders_one_row() -> None:
    table = render_markdown(evaluate(""))
    assert len(table.strip().splitlines()) == 2 + len(SLOS)
    assert all(slo.name in table for slo in SLOS)
    assert table.count("no data") == len(SLOS)
    assert all(
        "histogram_quantile" in s.promql or "sum(" in s.promql or "quantile(" in s.promql for s in SLOS
    )
