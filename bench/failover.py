"""Control-plane failover: two replicas on one PostgreSQL; kill -9 the leader, time the takeover.

Each round kills the leading replica (SIGKILL: no lease release, the lease has to expire),
submits a job through the surviving replica at once, and measures the seconds until that
replica reports itself leader on ``/readyz`` and until the job is bound (SCHEDULED). The
killed replica is then restarted, as a follower, for the next round. The node is registered
through the API with simulated GPUs; nothing runs the jobs (binding is what is measured).

Run: ``.venv/bin/python -m bench.failover [--rounds 5] [--lease 5]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.pg import free_port, start_postgres

TESSERA = str(Path(sys.executable).with_name("tessera"))
POLL_S = 0.05


@dataclass
class Replica:
    name: str
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, database_url: str, lease_s: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env |= {
            "TESSERA_HOME": str(self.home),
            "TESSERA_DATABASE_URL": database_url,
            "TESSERA_REPLICA_NAME": self.name,
            "TESSERA_LEADER_LEASE_SECONDS": str(lease_s),
            "TESSERA_NODE_HEARTBEAT_TIMEOUT": "3600",  # the bench's node sends no heartbeats
        }
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "up.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [TESSERA, "up", "--port", str(self.port), "--no-agent", "--no-gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait(lambda: self.ready() is not None, 60, f"replica {self.name} to start")

    def ready(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=2)
        except httpx.TransportError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def leads(self) -> bool:
        return bool((self.ready() or {}).get("leader"))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait(check: Any, timeout: float, what: str) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - start


class Api:
    def __init__(self, token: str) -> None:
        self.token = token

    def call(self, replica: Replica, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        r = httpx.request(method, f"{replica.url}/api/v1{path}", headers=headers, timeout=30, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def node(self, replica: Replica, gpus: int = 8) -> None:
        self.call(replica, "POST", "/users", json={"name": "agent-n1"})
        body = {"name": "agent-n1-token", "user": "agent-n1", "scopes": ["node"]}
        token = self.call(replica, "POST", "/tokens", json=body)["secret"]
        gpu = {"model": "A100-80GB", "memory_mib": 81920, "simulated": True}
        inventory = {
            "gpus": [{**gpu, "uuid": f"GPU-n1-{i}", "index": i} for i in range(gpus)],
            "cpu": 64,
            "memory": "256Gi",
            "simulated": True,
        }
        self.call(replica, "POST", "/nodes", token=token, json={"name": "n1", "inventory": inventory})

    def submit(self, replica: Replica, name: str) -> None:
        body = {"name": name, "groups": [{"command": ["true"], "resources": {"gpu_memory": "1Gi"}}]}
        self.call(replica, "POST", "/jobs", json=body)

    def bound(self, replica: Replica, name: str) -> bool:
        try:
            job = self.call(replica, "GET", f"/jobs/{name}")
        except (httpx.TransportError, RuntimeError):
            return False
        return bool(job["status"]["state"] == "SCHEDULED")


@dataclass
class Round:
    killed: str
    leader: str
    epoch: int
    leader_s: float
    bound_s: float


def run(rounds: int, lease_s: float) -> list[Round]:
    server = start_postgres()
    root = Path(tempfile.mkdtemp(prefix="tessera-failover-"))
    replicas = [Replica(name, root / name, free_port()) for name in ("a", "b")]
    try:
        database = f"failover_{uuid.uuid4().hex[:8]}"
        server.execute(f"CREATE DATABASE {database}")
        url = server.url(database)
        for replica in replicas:  # one after the other: the first migrates and bootstraps
            replica.start(url, lease_s)
        api = Api(json.loads((replicas[0].home / "credentials.json").read_text())["token"])
        wait(lambda: any(r.leads() for r in replicas), 60, "a leader")
        api.node(replicas[0])
        api.submit(replicas[0], "warmup")
        wait(lambda: api.bound(replicas[0], "warmup"), 60, "the warm-up job to bind")
        results = []
        for number in range(rounds):
            leader = next(r for r in replicas if r.leads())
            survivor = next(r for r in replicas if r is not leader)
            wait(
                lambda s=survivor: (s.ready() or {}).get("epoch", 0) > 0, 30, "the follower to see the lease"
            )
            leader.kill()
            killed = time.monotonic()
            name = f"round-{number}"
            api.submit(survivor, name)
            wait(survivor.leads, 120, f"{survivor.name} to lead")
            leader_s = time.monotonic() - killed
            wait(lambda s=survivor, n=name: api.bound(s, n), 120, f"job {name} to bind")
            bound_s = time.monotonic() - killed
            epoch = int((survivor.ready() or {}).get("epoch", 0))
            results.append(Round(leader.name, survivor.name, epoch, leader_s, bound_s))
            leader.start(url, lease_s)  # back, as the follower
        return results
    finally:
        for replica in replicas:
            replica.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def table(results: list[Round], lease_s: float) -> str:
    lines = [
        f"Failover, lease term {lease_s:g}s (renewed every {lease_s / 3:.2f}s), kill -9 of the leader:",
        "",
        "| round | killed | new leader | epoch | leader after (s) | new job bound after (s) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | {r.killed} | {r.leader} | {r.epoch} | {r.leader_s:.2f} | {r.bound_s:.2f} |")
    if results:
        lead = [r.leader_s for r in results]
        bound = [r.bound_s for r in results]
        lines.append(
            f"| median / max | | | | {statistics.median(lead):.2f} / {max(lead):.2f} "
            f"| {statistics.median(bound):.2f} / {max(bound):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=5.0, help="the leader lease's term, seconds")
    args = parser.parse_args()
    print(table(run(args.rounds, args.lease), args.lease))  # noqa: T201 - the bench's output


if __name__ == "__main__":
    main()
