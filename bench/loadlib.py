"""The load test's parts: a control plane with users, projects, queues and simulated nodes; many
concurrent submitters that inject client-side faults and retry with the same Idempotency-Key;
and the exactly-once check of what they were told against what the database holds.

Its data (configuration, ledger, tally, result) is in ``loadmodel.py``, the simulated nodes in
``loadnodes.py``. ``bench/load.py`` runs and reports it; ``tests/platform/test_load_quick.py`` runs it small.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench.api_submit import _stop_process
from bench.loadmodel import (
    MAX_ATTEMPTS,
    OPERATIONS,
    PROGRESS_S,
    READY_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    Identity,
    Ledger,
    LoadConfig,
    LoadResult,
    Progress,
    Server,
    Tally,
    Verification,
)
from bench.loadnodes import HEARTBEAT_S, Agents, NodeWork, inventory
from bench.procstats import CLK_TCK, cpu_ticks, status_kib
from tessera.platform.slos import evaluate
from tessera.platform.store.db import Database
from tessera.platform.store.rows import IdempotencyRow, JobRow
from tests.pg import free_port

__all__ = ["OPERATIONS", "LoadConfig", "LoadResult", "control_plane", "run_load"]

# the control plane -----------------------------------------------------------------------


@contextmanager
def control_plane(database_url: str | None, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``tessera up`` (no agent, no gateway) on a free loopback port with a throwaway home."""
    home = Path(tempfile.mkdtemp(prefix="tessera-load-"))
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    environ.update(env or {}, TESSERA_HOME=str(home))
    if database_url is not None:
        environ["TESSERA_DATABASE_URL"] = database_url
    tessera = Path(sys.executable).with_name("tessera")
    command = [str(tessera)] if tessera.exists() else [sys.executable, "-m", "tessera.cli.main"]
    log_path = home / "server.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, "up", "--port", str(port), "--no-agent", "--no-gateway"],
                env=environ,
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
        yield Server(
            url=url,
            token=token,
            database_url=database_url or f"sqlite:///{home / 'tessera.db'}",
            pid=process.pid,
            home=home,
        )
    finally:
        if process is not None:
            _stop_process(process)
        shutil.rmtree(home, ignore_errors=True)


def checked(response: httpx.Response, *ok: int) -> httpx.Response:
    if response.status_code not in ok:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response


def provision(server: Server, config: LoadConfig) -> tuple[list[Identity], str]:
    """Projects with a queue each, users spread over them (member role, a user token each), and a
    node token; returns the identities and the node token."""
    admin = {"Authorization": f"Bearer {server.token}"}
    projects = max(1, min(config.projects, config.users))
    with httpx.Client(base_url=server.url, headers=admin, timeout=REQUEST_TIMEOUT_S) as http:
        for p in range(projects):
            checked(http.post("/api/v1/queues", json={"name": f"lq{p}"}), 201)
            body = {"name": f"lp{p}", "queues": [f"lq{p}"], "default_queue": f"lq{p}"}
            checked(http.post("/api/v1/projects", json=body), 201)
        identities = []
        for u in range(config.users):
            user, project = f"lu{u}", f"lp{u % projects}"
            checked(http.post("/api/v1/users", json={"name": user}), 201)
            checked(http.put(f"/api/v1/projects/{project}/members/{user}", json={"role": "member"}), 200)
            made = checked(http.post("/api/v1/tokens", json={"name": f"{user}-load", "user": user}), 201)
            identities.append(Identity(user, project, f"lq{u % projects}", made.json()["secret"]))
        checked(http.post("/api/v1/users", json={"name": "lagent"}), 201)
        body = {"name": "lagent-node", "user": "lagent", "scopes": ["node"]}
        node_token = checked(http.post("/api/v1/tokens", json=body), 201).json()["secret"]
    return identities, node_token


async def _nodes(server: Server, token: str, config: LoadConfig, stop: asyncio.Event, work: NodeWork) -> None:
    """Simulated nodes, registered and kept Ready by heartbeats, so the scheduler binds under load;
    with ``config.job_seconds`` stand-in agents run the bound tasks for that long (loadnodes.py),
    without they stay bound and the rest pend."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        names = [f"lnode{n}" for n in range(config.nodes)]
        for n in range(config.nodes):
            checked(await http.post("/api/v1/nodes", json=inventory(n, config.gpus_per_node)), 200)
        agents = []
        if config.job_seconds:
            stand_in = Agents(http, names, config.job_seconds, work)
            agents = [asyncio.create_task(stand_in.follow(stop)), asyncio.create_task(stand_in.report(stop))]
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
            except TimeoutError:
                for name in names:
                    try:
                        await http.post(f"/api/v1/nodes/{name}/heartbeat")
                    except httpx.HTTPError:
                        pass  # the next beat comes in 10 s; missing one is not a failure here
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, return_exceptions=True)


# the submitters ---------------------------------------------------------------------------


def job_body(name: str, identity: Identity) -> dict[str, Any]:
    return {
        "name": name,
        "project": identity.project,
        "queue": identity.queue,
        "groups": [{"command": ["python", "-c", "print(1)"], "resources": {"gpu_memory": "4Gi"}}],
    }


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


class Submitter:
    """One client: its own connection, its own user; submits its share, retrying with the key."""

    def __init__(self, n: int, http: httpx.AsyncClient, identity: Identity, run: str, config: LoadConfig):
        self.http, self.identity, self.run, self.config = http, identity, run, config
        self.rng = random.Random(config.seed * 1_000_003 + n)
        self.mine: list[str] = []  # job ids this client was answered with

    async def request(
        self, tally: Tally, op: str, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response | None:
        """One logical request, retried (same headers and body) on timeouts, connection errors,
        429 and 5xx; None when it never got another answer."""
        for attempt in range(MAX_ATTEMPTS):
            first = attempt == 0 and timeout is not None
            start = time.perf_counter()
            try:
                response = await self.http.request(
                    method, path, timeout=timeout if first else REQUEST_TIMEOUT_S, **kwargs
                )
            except httpx.TimeoutException:
                tally.timeouts += 1
                tally.injected_timeouts += first
                await asyncio.sleep(0 if first else min(2.0, 0.05 * 2**attempt))
                continue
            except httpx.TransportError as exc:
                tally.connection_errors += 1
                tally.sample(f"{op}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            elapsed = time.perf_counter() - start
            tally.statuses[f"{op} {response.status_code}"] += 1
            if response.status_code == 429:
                tally.throttled += 1
                wait = _retry_after(response)
                tally.throttle_wait_s += wait
                await asyncio.sleep(wait)
                continue
            if response.status_code >= 500:
                tally.server_errors += 1
                tally.sample(f"{op}: HTTP {response.status_code}: {response.text[:200]}")
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            if response.is_success:
                tally.latencies[op].append(elapsed)
            return response
        return None

    async def submit(
        self, tally: Tally, ledger: Ledger, key: str, body: dict[str, Any], timeout: float | None = None
    ) -> None:
        response = await self.request(
            tally,
            "submit",
            "POST",
            "/api/v1/jobs",
            json=body,
            headers={"Idempotency-Key": key},
            timeout=timeout,
        )
        if response is None:
            tally.gave_up += 1
            return
        if response.status_code in (200, 201):
            job_id = str(response.json()["id"])
            ledger.accept(key, job_id, created=response.status_code == 201)
            tally.replays += response.status_code == 200
            self.mine.append(job_id)
            return
        tally.rejected += 1
        tally.sample(f"submit {key}: HTTP {response.status_code}: {response.text[:200]}")

    async def one(self, tally: Tally, ledger: Ledger, index: int) -> None:
        """Submission ``index`` (with its fault, if it drew one), then this user's reads."""
        key = f"{self.run}-{index}"
        body = job_body(f"ld{self.run}-{index}", self.identity)
        ledger.sent.add(key)
        faults, roll = self.config.faults, self.rng.random()
        if roll < faults.race:
            tally.duplicates_sent += 1
            await asyncio.gather(self.submit(tally, ledger, key, body), self.submit(tally, ledger, key, body))
        elif roll < faults.race + faults.duplicate:
            tally.duplicates_sent += 1
            await self.submit(tally, ledger, key, body)
            await self.submit(tally, ledger, key, body)
        elif roll < faults.race + faults.duplicate + faults.timeout:
            await self.submit(tally, ledger, key, body, timeout=faults.timeout_s)
        else:
            await self.submit(tally, ledger, key, body)
        mix = self.config.mix
        if self.mine and self.rng.random() < mix.get:
            job = self.rng.choice(self.mine)
            await self.request(tally, "get", "GET", f"/api/v1/jobs/{job}")
        if self.rng.random() < mix.list:
            await self.request(
                tally, "list", "GET", "/api/v1/jobs", params={"project": self.identity.project}
            )


async def _drive(
    server: Server, identities: list[Identity], config: LoadConfig, run: str, tally: Tally, ledger: Ledger
) -> float:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    clients = [
        httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {identities[c % len(identities)].token}"},
            limits=limits,
            timeout=REQUEST_TIMEOUT_S,
        )
        for c in range(config.clients)
    ]
    try:
        submitters = [
            Submitter(c, http, identities[c % len(identities)], run, config) for c, http in enumerate(clients)
        ]
        for http in clients:  # connections open before the clock starts
            checked(await http.get("/api/v1/users/me"), 200)

        async def work(s: Submitter, indices: range) -> None:
            for index in indices:
                if config.rate:
                    due = start + index / config.rate - time.perf_counter()
                    if due > 0:
                        await asyncio.sleep(due)
                await s.one(tally, ledger, index)

        start = time.perf_counter()
        await asyncio.gather(
            *(work(s, range(c, config.submissions, config.clients)) for c, s in enumerate(submitters))
        )
        return time.perf_counter() - start
    finally:
        for http in clients:
            await http.aclose()


# the check ------------------------------------------------------------------------------------


def verify(server: Server, run: str, ledger: Ledger) -> Verification:
    """Compare what the clients were told with the database (and with the list API)."""
    prefix = f"{run}-"
    db = Database(server.database_url, pool_size=1)
    try:
        with db.read() as session:
            keys = dict(
                session.execute(
                    select(IdempotencyRow.key, IdempotencyRow.job_id).where(
                        IdempotencyRow.key.startswith(prefix)
                    )
                ).all()
            )
            jobs = list(
                session.execute(
                    select(JobRow.id, JobRow.name).where(JobRow.name.startswith(f"ld{prefix}"))
                ).all()
            )
    finally:
        db.dispose()
    stored = {str(job_id): name for job_id, name in jobs}
    by_key = {key: str(job_id) for key, job_id in keys.items()}
    accepted = {key: ids for key, ids in ledger.answers.items() if ids}
    lost = sum(1 for key, ids in accepted.items() if by_key.get(key) not in ids or by_key[key] not in stored)
    keyed_jobs = set(by_key.values())
    names = Counter(stored.values())
    duplicates = sum(n - 1 for n in names.values()) + sum(1 for job_id in stored if job_id not in keyed_jobs)
    listed = 0
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=REQUEST_TIMEOUT_S
    ) as http:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["continue"] = cursor
            page = checked(http.get("/api/v1/jobs", params=params), 200).json()
            listed += sum(1 for job in page["items"] if job["name"].startswith(f"ld{prefix}"))
            cursor = page.get("continue")
            if not cursor:
                break
    return Verification(
        keys_sent=len(ledger.sent),
        keys_accepted=len(accepted),
        answers_disagree=sum(1 for ids in accepted.values() if len(ids) > 1),
        created_twice=sum(1 for n in ledger.created.values() if n > 1),
        stored_jobs=len(stored),
        stored_keys=len(by_key),
        lost=lost,
        duplicates=duplicates,
        unacknowledged=sum(1 for key in by_key if key not in accepted),
        api_listed=listed,
    )


def scrape(server: Server) -> str:
    headers = {"Authorization": f"Bearer {server.token}"}
    return checked(httpx.get(f"{server.url}/metrics", headers=headers, timeout=REQUEST_TIMEOUT_S), 200).text


async def _progress(server: Server, tally: Tally, ledger: Ledger, stop: asyncio.Event, echo: bool) -> None:
    """Every PROGRESS_S: keys accepted so far, 429s and the server's RSS (a collapse shows here)."""
    start = time.perf_counter()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), PROGRESS_S)
        except TimeoutError:
            pass
        point = Progress(
            round(time.perf_counter() - start, 1),
            len(ledger.answers),
            tally.throttled,
            round((status_kib(server.pid) or 0) / 1024),
        )
        tally.progress.append(point)
        if echo:
            print(
                f"  {point.at_s:7.1f}s: {point.accepted} accepted, {point.throttled} 429s, "
                f"server RSS {point.server_rss_mib} MiB",
                flush=True,
            )


def run_load(
    server: Server, database: str, config: LoadConfig, fairness: bool = True, echo: bool = False
) -> LoadResult:
    """Provision, load, verify and scrape one running control plane; ``echo`` prints progress."""
    identities, node_token = provision(server, config)
    run = uuid.uuid4().hex[:6]
    tally, ledger, work = Tally(), Ledger(), NodeWork()

    async def main() -> float:
        stop = asyncio.Event()
        nodes = asyncio.create_task(_nodes(server, node_token, config, stop, work))
        watch = asyncio.create_task(_progress(server, tally, ledger, stop, echo))
        await asyncio.sleep(0)
        try:
            return await _drive(server, identities, config, run, tally, ledger)
        finally:
            stop.set()
            await nodes
            await watch

    before = scrape(server)
    ticks0, times0 = cpu_ticks(server.pid), os.times()
    wall = asyncio.run(main())
    ticks1, times1 = cpu_ticks(server.pid), os.times()
    server_cpu = (
        (ticks1 - ticks0) / CLK_TCK / wall * 100 if ticks0 is not None and ticks1 is not None else math.nan
    )
    client_cpu = (times1.user + times1.system - times0.user - times0.system) / wall * 100
    after = scrape(server)  # before the check's own big list pages add to the API's histograms
    verification = verify(server, run, ledger)
    return LoadResult(
        database=database,
        fairness=fairness,
        clients=config.clients,
        submissions=config.submissions,
        users=len(identities),
        wall_s=wall,
        tally=tally,
        verification=verification,
        server_cpu_pct=server_cpu,
        client_cpu_pct=client_cpu,
        slos=evaluate(after, baseline=before),
        offered=config.rate,
        job_seconds=config.job_seconds,
        nodes=work,
    )
