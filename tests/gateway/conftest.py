"""Fixtures: a fake control plane, replica servers, and the gateway as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tessera.api.serving import GatewayReport, Route
from tests.gateway.servers import Backends, FakeControlPlane, wait_until

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.2


@dataclass
class GatewayProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    control: FakeControlPlane

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: httpx.Timeout | float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def apply(self, *routes: Route, ready: bool = True) -> int:
        """Set the routes at the control plane and wait until the gateway applies them (and, with
        ``ready``, until every non-draining replica in them passed its probe)."""
        revision = self.control.set_routes(*routes)
        wanted = {rep.id for r in routes for rev in r.revisions for rep in rev.replicas if not rep.draining}

        def applied(report: GatewayReport) -> bool:
            if report.routes_revision < revision:
                return False
            up = {s.replica_id for s in report.replicas if s.ready}
            return not ready or wanted <= up

        start = max(self.control.report_count() - 1, 0)
        self.control.wait_report(applied, after=start)
        return revision

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def spawn_gateway(control: FakeControlPlane, tmp_path: Path, *extra: str) -> GatewayProcess:
    ready_file = tmp_path / "gateway.url"
    log_path = tmp_path / "gateway.log"
    env = {**os.environ, "TESSERA_GATEWAY_TOKEN": control.token, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tessera.gateway",
                "--control-url",
                control.url,
                "--interval",
                str(INTERVAL),
                "--ready-file",
                str(ready_file),
                "--name",
                "gw-test",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not ready_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the gateway did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    url = ready_file.read_text().strip()
    return GatewayProcess(url=url, proc=proc, log_path=log_path, control=control)


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    plane = FakeControlPlane()
    yield plane
    plane.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    servers = Backends()
    yield servers
    servers.close()


@pytest.fixture
def gateway(control_plane: FakeControlPlane, tmp_path: Path) -> Iterator[GatewayProcess]:
    """The gateway as a subprocess (``python -m tessera.gateway``), stopped with SIGTERM."""
    gw = spawn_gateway(control_plane, tmp_path)
    yield gw
    code = gw.stop()
    log = gw.log()
    assert code == 0, f"the gateway exited with {code}:\n{log}"
    assert "Traceback" not in log, log


__all__ = ["GatewayProcess", "spawn_gateway", "wait_until"]
