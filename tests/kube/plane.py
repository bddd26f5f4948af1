"""A Tessera control plane (`tessera up`) whose backend is the test Kubernetes cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cluster import TESSERA, wait_until
from tests.kube.cluster import LocalCluster
from tests.pg import free_port


@dataclass
class KubePlane:
    cluster: LocalCluster
    namespace: str
    home: Path
    port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubePlane:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            TESSERA_HOME=str(self.home),
            TESSERA_BACKEND="kubernetes",
            TESSERA_KUBECONFIG=str(self.cluster.kubeconfig),
            TESSERA_KUBE_NAMESPACE=self.namespace,
            TESSERA_NODE_HEARTBEAT_TIMEOUT="4",
            TESSERA_SCHEDULER_INTERVAL="0.1",
        )
        env.update(self.env_extra)
        log = open(self.home / "up.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [TESSERA, "up", "--port", str(self.port), "--no-agent", "--no-gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, 60, what=f"control plane at {self.url}\n{self.log_tail()}")
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            return False

    def log_tail(self) -> str:
        path = self.home / "up.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def token(self) -> str:
        return str(json.loads((self.home / "credentials.json").read_text())["token"])

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=30, **kwargs)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.api("POST", "/jobs", json=body)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def job(self, ref: str) -> dict[str, Any]:
        r = self.api("GET", f"/jobs/{ref}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_state(self, ref: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(ref)
            return job if job["status"]["state"] in states else None

        try:
            return dict(wait_until(check, timeout, what=f"job {ref} to reach {states}"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def pods(self, job_id: str | None = None) -> list[dict[str, Any]]:
        assert self.cluster.kube is not None
        selector = f"tessera.io/job={job_id}" if job_id else "app.kubernetes.io/managed-by=tessera"
        items = self.cluster.kube.list(f"/api/v1/namespaces/{self.namespace}/pods", selector)["items"]
        return list(items)

    def wait_nodes(self, names: list[str], timeout: float = 30) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            nodes = {n["name"]: n for n in self.api("GET", "/nodes").json()}
            got = [nodes[n] for n in names if n in nodes and nodes[n]["state"] == "Ready"]
            return got if len(got) == len(names) else None

        return list(wait_until(ready, timeout, what=f"nodes {names} Ready"))


def gpu_job(
    name: str,
    selector: dict[str, str],
    replicas: int = 1,
    gpu_memory: str = "10Gi",
    labels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "groups": [
            {
                "name": "worker",
                "replicas": replicas,
                "command": ["python", "train.py"],
                "image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
                "resources": {"gpu_memory": gpu_memory, "gpu_compute": 25},
            }
        ],
        "node_selector": selector,
        "labels": labels or {},
        **extra,
    }


def wait(what: str, check: Any, timeout: float = 30) -> Any:
    return wait_until(check, timeout, what=what)


def now() -> float:
    return time.monotonic()
