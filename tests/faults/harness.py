"""The fault suite's tools: a real `tessera up` that can be killed, extra node agents, submitters
that keep submitting through a restart, and the bookkeeping that says whether anything was lost."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tessera.api.admin import CheckReport
from tessera.client import Client
from tessera.client.config import ClientConfig
from tests.e2e.cluster import ROOT, TESSERA, LocalCluster, _exists, wait_until
from tests.pg import PostgresServer

__all__ = ["Agent", "FaultCluster", "Submitter", "record", "wait_until", "_exists"]


def record(what: str, **figures: Any) -> None:
    """One line of the fault record (docs/reliability.md takes its figures from these)."""
    print(f"FAULT-RECORD {what}: " + json.dumps(figures, sort_keys=True, default=str))  # noqa: T201


class FaultCluster(LocalCluster):
    """`tessera up` (control plane + its detached agent) with the tools to break and check it."""

    def start(self) -> FaultCluster:
        super().start()
        return self

    def client(self) -> Client:
        return Client(ClientConfig(url=self.url, token=self.token, source="test"), timeout=30)

    def assert_consistent(self) -> CheckReport:
        """`tessera admin check` after the fault: no GPU over-committed, nothing orphaned, states
        agree. The invariants hold at every moment, so one look must pass, with no waiting."""
        r = self.cli("admin", "check", "-o", "json")
        assert r.returncode == 0, f"tessera admin check failed:\n{r.stdout}\n{r.stderr}"
        report = CheckReport.model_validate_json(r.stdout)
        assert report.ok and not report.problems, report
        return report

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, terminal ones too."""
        out: list[dict[str, Any]] = []
        with self.client() as client:
            for job in client.iter_jobs(limit=500):
                out.append(job.model_dump(mode="json"))
        return out

    def node(self, name: str) -> dict[str, Any] | None:
        r = self.api("GET", f"/api/v1/nodes/{name}")
        return dict(r.json()) if r.status_code == 200 else None

    def node_name(self) -> str:
        return str(self.api("GET", "/api/v1/nodes").json()[0]["name"])


@dataclass
class Agent:
    """A node agent this test starts itself (`tessera node`), with its own name and state dir."""

    cluster: LocalCluster
    name: str
    state_dir: Path
    gpus: str = "1xA100-80GB"
    labels: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            TESSERA,
            "node",
            "--name",
            self.name,
            "--state-dir",
            str(self.state_dir),
            "--url",
            self.cluster.url,
            "--token-file",
            str(self.cluster.home / "node" / "token"),
            "--simulate-gpus",
            self.gpus,
            "--heartbeat",
            "0.5",
            *(arg for label in self.labels for arg in ("--label", label)),
            *self.extra,
        ]
        log = open(self.state_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            argv,
            env=self.cluster.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Submitter(threading.Thread):
    """Submits jobs one after another with an Idempotency-Key, retrying each through errors (the
    control plane being killed and restarted) with the same key until it is answered 2xx."""

    def __init__(
        self, url: str, token: str, prefix: str, count: int, command: list[str], gpus: float = 0.25
    ) -> None:
        super().__init__(name=f"submit-{prefix}", daemon=True)
        self.url, self.token, self.prefix, self.count = url, token, prefix, count
        self.command, self.gpus = command, gpus
        self.deadline_s = 120.0
        self.accepted: dict[str, str] = {}  # key -> job id
        self.retried: Counter[str] = Counter()  # key -> tries that failed
        self.problems: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.deadline_s
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        ) as http:
            for i in range(self.count):
                key = f"{self.prefix}-{i}"
                body = {
                    "name": key,
                    "labels": {"fault-key": key},
                    "groups": [{"command": self.command, "resources": {"gpus": self.gpus}}],
                }
                while time.monotonic() < deadline:
                    try:
                        r = http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
                    except httpx.TransportError:
                        self.retried[key] += 1
                        time.sleep(0.2)
                        continue
                    if r.status_code in (200, 201):
                        self.accepted[key] = r.json()["id"]
                        break
                    if r.status_code >= 500 or r.status_code == 429:
                        self.retried[key] += 1
                        time.sleep(0.2)
                        continue
                    self.problems.append(f"{key}: {r.status_code} {r.text[:300]}")
                    break
                else:
                    self.problems.append(f"{key}: not accepted before the deadline")


def seeded_rng(name: str) -> tuple[random.Random, int]:
    """A seeded random source; the seed is printed (TESSERA_FAULT_SEED replays one)."""
    fixed = os.environ.get("TESSERA_FAULT_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(2**32)
    print(f"{name}: seed {seed}")  # noqa: T201
    return random.Random(seed), seed


def submit(
    cluster: LocalCluster, name: str, command: list[str], gpus: float = 1, retries: int = 0, **spec: Any
) -> str:
    """Submit a job over the API; returns its id."""
    body = {
        "name": name,
        "retry": {"max_retries": retries},
        "groups": [{"command": command, "resources": {"gpus": gpus}}],
        **spec,
    }
    r = cluster.api("POST", "/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def task_pids(state_dir: Path, job_id: str) -> list[int]:
    """The main pids of a job's tasks on a node, from their shims' state files."""
    pids = []
    for path in sorted((state_dir / "jobs" / job_id).glob("*/state.json")):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            pids.append(int(pid))
    return pids


def pg_stop(server: PostgresServer) -> None:
    """Stop the server (fast shutdown), keeping its data directory."""
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=30)


def pg_start(server: PostgresServer) -> None:
    """Start a stopped server again on the same port and data directory."""
    bindir = Path(glob.glob("/usr/lib/postgresql/*/bin/postgres")[-1]).parent
    user = "postgres" if os.geteuid() == 0 else None
    options = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"]
    log = open(server.root / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
    server.process = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(server.root / "data"), "-p", str(server.port)]
        + ["-k", str(server.root / "sock"), *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=server.root,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )

    def up() -> bool:
        try:
            with psycopg.connect(server.admin_dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            assert server.process.poll() is None, (server.root / "postgres.log").read_text()[-2000:]
            return False

    wait_until(up, 60, what="PostgreSQL to start again")
