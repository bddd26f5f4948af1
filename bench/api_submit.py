"""Job-submit API throughput and p50/p99 latency on SQLite and on PostgreSQL.

Starts a real control plane (``tessera up``, uvicorn on loopback) per database, then has N client
threads, each with its own ``httpx.Client``, submit jobs via ``POST /api/v1/jobs`` as fast as they
can. Every submit is a full write transaction that bumps the change-feed revision, so writers are
serialised by design; the numbers measure that path end to end (HTTP, auth, validation, commit).

Run: ``.venv/bin/python -m bench.api_submit [--clients 8] [--jobs 2000] [--db sqlite,postgres]``
(``make bench`` runs it with the defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.pg import PostgresServer, free_port, start_postgres

DATABASES = ("sqlite", "postgres")
WARMUP_SUBMITS = 20
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Server:
    url: str
    token: str


@dataclass
class Result:
    database: str
    clients: int
    jobs: int
    errors: int
    wall_s: float
    latencies_s: list[float]
    error_samples: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful submits' latencies, in milliseconds."""
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1] * 1000.0


def job_body(name: str) -> dict[str, object]:
    return {
        "name": name,
        "groups": [{"command": ["python", "-c", "print(1)"], "resources": {"gpu_memory": "4Gi"}}],
    }


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def control_plane(database_url: str | None) -> Iterator[Server]:
    """Run ``tessera up`` on a free loopback port with a throwaway home; stop it on exit."""
    home = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    port = free_port()
    env = dict(os.environ, TESSERA_HOME=str(home))
    env.pop("TESSERA_DATABASE_URL", None)
    if database_url is not None:
        env["TESSERA_DATABASE_URL"] = database_url
    tessera = Path(sys.executable).with_name("tessera")
    command = [str(tessera)] if tessera.exists() else [sys.executable, "-m", "tessera.cli.main"]
    log_path = home / "server.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, "up", "--port", str(port), "--no-agent", "--no-gateway"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=url, timeout=5.0) as probe:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"control plane exited early:\n{log_path.read_text()[-2000:]}")
                try:
                    if probe.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"control plane not ready in time:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        token = json.loads((home / "credentials.json").read_text())["token"]
        yield Server(url=url, token=token)
    finally:
        if process is not None:
            _stop_process(process)
        shutil.rmtree(home, ignore_errors=True)


def run_load(server: Server, database: str, clients: int, jobs: int) -> Result:
    """Submit ``jobs`` jobs from ``clients`` threads; one latency per successful (201) submit."""
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as warm:
        for n in range(WARMUP_SUBMITS):
            warm.post("/api/v1/jobs", json=job_body(f"warmup-{n}")).raise_for_status()

    lock = threading.Lock()
    latencies: list[float] = []
    error_samples: list[str] = []
    errors = 0
    barrier = threading.Barrier(clients + 1)

    def worker(indices: range) -> None:
        nonlocal errors
        mine: list[float] = []
        failed: list[str] = []
        with httpx.Client(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            barrier.wait()
            for n in indices:
                body = job_body(f"bench-{n}")
                key = {"Idempotency-Key": str(uuid.uuid4())}
                start = time.perf_counter()
                try:
                    response = client.post("/api/v1/jobs", json=body, headers=key)
                except httpx.HTTPError as exc:
                    failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                if response.status_code == 201:
                    mine.append(elapsed)
                else:
                    failed.append(f"HTTP {response.status_code}: {response.text[:200]}")
        with lock:
            latencies.extend(mine)
            errors += len(failed)
            error_samples.extend(failed[: max(0, 5 - len(error_samples))])

    threads = [
        threading.Thread(target=worker, args=(range(i, jobs, clients),), daemon=True) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return Result(
        database=database,
        clients=clients,
        jobs=jobs,
        errors=errors,
        wall_s=wall,
        latencies_s=latencies,
        error_samples=error_samples,
    )


def stop_postgres(pg: PostgresServer) -> None:
    """Stop the server ``start_postgres`` started, postmaster first.

    As root the Popen is ``runuser``, which exits on SIGINT without stopping its postgres child, so
    ``PostgresServer.stop`` alone would orphan the postmaster; signal it by its own PID file first.
    """
    pid_file = pg.root / "data" / "postmaster.pid"
    if pg.process.poll() is None and pid_file.exists():
        try:
            postmaster = int(pid_file.read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            pg.process.wait(timeout=20)
        except (ValueError, IndexError, ProcessLookupError, subprocess.TimeoutExpired):
            pass
    pg.stop()


def bench_database(database: str, clients: int, jobs: int) -> Result:
    if database == "sqlite":
        with control_plane(None) as server:
            return run_load(server, database, clients, jobs)
    pg = start_postgres()
    try:
        pg.execute("CREATE DATABASE bench")
        with control_plane(pg.url("bench")) as server:
            return run_load(server, database, clients, jobs)
    finally:
        stop_postgres(pg)


def format_table(results: list[Result]) -> str:
    header = ["database", "clients", "jobs", "errors", "throughput (jobs/s)", "p50 (ms)", "p99 (ms)"]
    rows = [
        [
            r.database,
            str(r.clients),
            str(r.jobs),
            str(r.errors),
            f"{r.throughput:.1f}",
            f"{r.percentile_ms(0.50):.1f}",
            f"{r.percentile_ms(0.99):.1f}",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api_submit", description="Job-submit API throughput and latency."
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--jobs", type=int, default=2000, help="submissions per database (default 2000)")
    parser.add_argument(
        "--db",
        default=",".join(DATABASES),
        help="comma-separated databases to run: sqlite,postgres (default both)",
    )
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.db.split(",") if d.strip()]
    unknown = sorted(set(args.databases) - set(DATABASES))
    if unknown or not args.databases:
        names = ", ".join(unknown) or "(none)"
        parser.error(f"--db: unknown database(s) {names}; choose from sqlite,postgres")
    if args.clients < 1 or args.jobs < 1:
        parser.error("--clients and --jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[Result] = []
    for database in args.databases:
        print(f"{database}: {args.jobs} submits from {args.clients} clients ...", flush=True)
        result = bench_database(database, args.clients, args.jobs)
        print(f"{database}: done in {result.wall_s:.1f}s, {result.errors} errors", flush=True)
        for sample in result.error_samples:
            print(f"  error: {sample}")
        results.append(result)
    print()
    print(format_table(results))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
