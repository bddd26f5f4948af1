"""A real single-machine Tessera for end-to-end tests: `tessera up` (+ its detached agent)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.pg import free_port

TESSERA = str(Path(sys.executable).with_name("tessera"))
ROOT = Path(__file__).resolve().parents[2]


def wait_until(check: Callable[[], Any], timeout: float = 30, every: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last {last!r}")


@dataclass
class LocalCluster:
    home: Path
    port: int = field(default_factory=free_port)
    gpus: str = "2xA100-80GB"
    env_extra: dict[str, str] = field(default_factory=dict)
    gateway: bool = False  # also start the serving gateway
    up: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        return {**env, "TESSERA_HOME": str(self.home), "COLUMNS": "200", **self.env_extra, **extra}

    def start(self) -> LocalCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "up.log", "ab")  # noqa: SIM115 - closed with the process
        self.up = subprocess.Popen(
            [
                TESSERA,
                "up",
                "--port",
                str(self.port),
                "--simulate-gpus",
                self.gpus,
                "--gateway" if self.gateway else "--no-gateway",
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        wait_until(self._ready, 60, what=f"control plane at {self.url}\n{self.log_tail()}")
        wait_until(
            lambda: self.node_state() == "Ready",
            60,
            what=f"the node agent to register\n{self.log_tail('node/agent.log')}",
        )
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert self.up is not None and self.up.poll() is None, self.log_tail()
            return False

    def log_tail(self, name: str = "up.log") -> str:
        path = self.home / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {name})"

    # talking to it -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return str(json.loads((self.home / "credentials.json").read_text())["token"])

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def cli(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TESSERA, *args], env=self.env(**extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def submit(self, name: str, *argv: str, flags: tuple[str, ...] = ()) -> dict[str, Any]:
        r = self.cli("submit", "train", "--name", name, *flags, "-o", "json", "--", *argv)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def job(self, name: str) -> dict[str, Any]:
        r = self.api("GET", f"/api/v1/jobs/{name}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_state(self, name: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (job := self.job(name))["status"]["state"] in states and job,
                timeout,
                what=f"job {name} to reach {states}",
            )
        )

    def node_state(self) -> str | None:
        try:
            nodes = self.api("GET", "/api/v1/nodes").json()
        except (httpx.TransportError, ValueError, KeyError, FileNotFoundError):
            return None
        return nodes[0]["state"] if nodes else None

    # breaking it ---------------------------------------------------------------------------

    def agent_pid(self) -> int:
        from tessera.platform.backends import local
        from tessera.platform.settings import Settings

        pid = local.agent_pid(Settings(home=self.home))
        assert pid and pid > 0, "no local agent is running"
        return pid

    def kill9_control_plane(self) -> None:
        assert self.up is not None
        self.up.send_signal(signal.SIGKILL)
        self.up.wait()

    def kill9_agent(self) -> None:
        pid = self.agent_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _exists(pid), 10, what="the agent to die")

    def stop(self) -> None:
        """`tessera down` (stops the agent and tasks), then make sure the API process is gone."""
        subprocess.run(
            [TESSERA, "down", "--timeout", "20"], env=self.env(), capture_output=True, timeout=90, cwd=ROOT
        )
        if self.up is not None and self.up.poll() is None:
            self.up.kill()
            self.up.wait()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
