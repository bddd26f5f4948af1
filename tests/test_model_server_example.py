"""examples/model_server.py, the model server the serving docs run: a real subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SERVER = Path(__file__).resolve().parents[1] / "examples" / "model_server.py"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def model_server(**env: str) -> Iterator[Running]:
    port = free_port()
    full_env = os.environ | {"PORT": str(port), "LOAD_SECONDS": "0.5"} | env
    proc = subprocess.Popen([sys.executable, str(SERVER)], env=full_env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "the model server did not start"
                time.sleep(0.02)
        yield Running(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with model_server(TESSERA_SERVICE_REVISION="3", TESSERA_REPLICA_ID="r-1") as running:
        wait_ready(running.url)
        yield running


def test_ready_is_503_while_loading_then_200_and_healthz_is_always_200():
    with model_server(LOAD_SECONDS="1.0") as s:
        loading = httpx.get(f"{s.url}/ready")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        assert httpx.post(f"{s.url}/predict", json={"inputs": [[1, 2, 3, 4]]}).status_code == 503
        wait_ready(s.url)
        assert httpx.get(f"{s.url}/").json()["status"] == "ready"  # the default readiness_path


def test_port_is_required():
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    done = subprocess.run([sys.executable, str(SERVER)], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2 and b"PORT" in done.stderr


def test_predict(server: Running):
    r = httpx.post(f"{server.url}/predict", json={"inputs": [[1, 2, 3, 4], [0, 0, 0, 0.5]]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["revision"] == "3" and doc["replica"] == "r-1"
    outputs = doc["outputs"]
    assert len(outputs) == 2 and all(len(row) == 3 and all(-1 <= v <= 1 for v in row) for row in outputs)
    again = httpx.post(f"{server.url}/predict", json={"inputs": [[1, 2, 3, 4]]}).json()["outputs"]
    assert again == outputs[:1]  # deterministic


@pytest.mark.parametrize(
    ("body", "query", "field"),
    [
        (b"not json", "", "body"),
        (b"[1, 2]", "", "body"),
        (b'{"x": 1}', "", "inputs"),
        (b'{"inputs": []}', "", "inputs"),
        (b'{"inputs": [[1, 2, 3, 4], [1, 2, 3]]}', "", "inputs[1]"),
        (b'{"inputs": [[1, 2, "x", 4]]}', "", "inputs[0][2]"),
        (b'{"inputs": [[1, 2, 3, 4]]}', "?work_ms=soon", "work_ms"),
        (b'{"inputs": [[1, 2, 3, 4]]}', "?work_ms=-1", "work_ms"),
    ],
)
def test_bad_input_is_400_naming_the_field(server: Running, body: bytes, query: str, field: str):
    r = httpx.post(f"{server.url}/predict{query}", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert httpx.get(f"{server.url}/stream?chunks=many").json()["field"] == "chunks"


def test_stream_sends_chunks_over_time(server: Running):
    arrivals: list[float] = []
    lines = []
    with httpx.stream("GET", f"{server.url}/stream?chunks=4&delay_ms=150") as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        for line in r.iter_lines():
            if line:
                lines.append(json.loads(line))
                arrivals.append(time.monotonic())
    assert [chunk["chunk"] for chunk in lines] == [0, 1, 2, 3] and lines[0]["revision"] == "3"
    assert arrivals[-1] - arrivals[0] >= 0.3  # not one buffered response


def test_echo_streams_a_chunked_upload_back(server: Running):
    pieces = [bytes([i]) * (50_000 + i) for i in range(20)]

    def upload() -> Iterator[bytes]:
        yield from pieces

    r = httpx.post(f"{server.url}/echo", content=upload(), headers={"Content-Type": "application/x-test"})
    assert r.status_code == 200 and r.content == b"".join(pieces)
    assert r.headers["content-type"] == "application/x-test"
    assert httpx.post(f"{server.url}/echo", content=b"plain").content == b"plain"  # Content-Length


def test_requests_run_concurrently(server: Running):
    def call(_: int) -> int:
        return httpx.post(f"{server.url}/predict?work_ms=300", json={"inputs": [[1, 2, 3, 4]]}).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    elapsed = time.monotonic() - started
    assert codes == [200] * 8
    assert elapsed < 4 * 0.3, f"8 x 300 ms took {elapsed:.2f}s"


def test_sigterm_drains_in_flight_requests_and_exits_0():
    with model_server(LOAD_SECONDS="0") as s:
        wait_ready(s.url)
        result: dict[str, httpx.Response] = {}

        def slow() -> None:
            url = f"{s.url}/predict?work_ms=2000"
            result["r"] = httpx.post(url, json={"inputs": [[1, 2, 3, 4]]}, timeout=30)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.4)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.8)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{s.url}/healthz", timeout=2)
        assert s.proc.poll() is None  # still finishing the request
        thread.join(timeout=20)
        assert result["r"].status_code == 200
        assert s.proc.wait(timeout=15) == 0
