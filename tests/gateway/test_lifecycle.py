"""Starting and stopping: the subprocess entry point, graceful SIGTERM, the in-process class."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tessera.gateway import Gateway
from tessera.gateway import app as app_module
from tessera.gateway.__main__ import parse_args
from tests.gateway.conftest import spawn_gateway
from tests.gateway.servers import Backends, FakeControlPlane, route, wait_until

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer svc-token"}


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=5)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        # refused; or accepted into the backlog just as the listener closed, then reset
        return True
    return False


def test_sigterm_lets_in_flight_requests_finish(
    control_plane: FakeControlPlane, backends: Backends, tmp_path: Path
) -> None:
    replica = backends.add("a")
    gw = spawn_gateway(control_plane, tmp_path)
    try:
        gw.apply(route("slow", [(1, 100, [replica.route_replica()])]))
        with ThreadPoolExecutor(1) as pool, gw.client() as client:
            pending = pool.submit(client.get, "/serve/slow/block", params={"key": "k"}, headers=AUTH)
            wait_until(lambda: replica.active == 1)
            gw.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: _refused(gw.url), what="the listener to close")
            assert gw.proc.poll() is None  # waiting for the request in flight
            backends.release("k")
            assert pending.result(30).status_code == 200
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()


def test_unreachable_control_plane_at_start(tmp_path: Path) -> None:
    plane = FakeControlPlane()
    plane.close()  # nothing listens there any more
    gw = spawn_gateway(plane, tmp_path)
    try:
        with gw.client() as client:
            assert client.get("/healthz").status_code == 200
            response = client.get("/serve/x/", headers=AUTH)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "no route table yet" in response.json()["detail"]
    finally:
        assert gw.stop() == 0
    assert "reporting to" in gw.log() and "Traceback" not in gw.log()


def test_in_process_gateway(control_plane: FakeControlPlane, backends: Backends) -> None:
    replica = backends.add("a")
    control_plane.set_routes(route("inproc", [(1, 100, [replica.route_replica()])], public=True, token=None))
    gateway = Gateway(control_plane.url, control_plane.token, name="inproc", interval=0.2)
    url = gateway.start()
    try:
        assert url == gateway.url and url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{url}/serve/inproc/hi", timeout=30)  # held until the probe passes
        assert response.status_code == 200 and response.json()["path"] == "/hi"
        assert gateway.router.synced
    finally:
        gateway.stop()
    assert _refused(url)
    assert control_plane.all_reports()[0].gateway == "inproc"


def test_stopping_answers_held_requests(
    control_plane: FakeControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "GRACE_S", 2)
    control_plane.set_routes(route("cold", [(1, 100, [])], public=True, token=None))
    gateway = Gateway(control_plane.url, control_plane.token, interval=0.2)
    url = gateway.start()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, f"{url}/serve/cold/", timeout=30)
        wait_until(lambda: gateway.metrics.held_total == 1, what="the request to be held")
        gateway.stop()
        response = pending.result(30)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["detail"] == "the gateway is shutting down"


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="DNS label"):
        Gateway("http://127.0.0.1:1", "t", name="Not_A_Label")
    with pytest.raises(ValueError, match="interval"):
        Gateway("http://127.0.0.1:1", "t", interval=0)


def test_cli_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_GATEWAY_TOKEN", "from-env")
    args = parse_args(["--control-url", "http://cp:8080", "--port", "9000", "--interval", "0.5"])
    assert (args.control_url, args.token, args.port, args.interval, args.host) == (
        "http://cp:8080",
        "from-env",
        9000,
        0.5,
        "127.0.0.1",
    )
    assert parse_args(["--control-url", "u", "--token", "flag"]).token == "flag"
    monkeypatch.delenv("TESSERA_GATEWAY_TOKEN")
    with pytest.raises(SystemExit):
        parse_args(["--control-url", "u"])
