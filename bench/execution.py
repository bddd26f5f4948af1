"""Execution on one machine: submit-to-running latency, and the node agent's footprint with live tasks.

Each phase starts its own real single-machine Tessera (``tests.e2e.cluster.LocalCluster``:
``tessera up --simulate-gpus 2xA100-80GB`` with a throwaway ``TESSERA_HOME``, plus the detached node
agent it starts) and stops it with ``tessera down`` at the end, whatever happens.

1. Latency: submit N CPU-only ``sleep 1`` jobs, either paced at a steady rate or in one burst from a
   few client threads, wait until every job has ended, then read each job's events. Latencies are
   server timestamps only (no clock skew): ``status.submitted_at`` of the submit response versus the
   ``at`` of the job's first event with ``to_state`` SCHEDULED (the bind) and RUNNING.
2. Footprint: submit M CPU-only ``sleep 600`` jobs, wait until all are RUNNING, then sample for a
   window: the agent's and the control plane's VmRSS (``/proc/<pid>/status``) and CPU% (utime+stime
   deltas of ``/proc/<pid>/stat`` over the window, 100% = one core), and the shims' (processes whose
   cmdline holds ``tessera.node.shim`` and ``--task-dir <home>/...``) total RSS, PSS and CPU%. The same
   is sampled with 0 tasks before submitting, as a baseline.

Run: ``.venv/bin/python -m bench.execution [--jobs 200] [--live 200] [--rate 20] [--modes steady,burst]``
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.procstats import Footprint, _children, sample, shim_pids
from tests.e2e.cluster import LocalCluster

MODES = ("steady", "burst")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = 500


# the cluster ---------------------------------------------------------------------------------------


def _kill_leftovers(cluster: LocalCluster) -> None:
    """Whatever `tessera down` left behind under this home: shims (and their tasks), then the agent."""
    shims = shim_pids(cluster.home)
    if shims:
        print(f"  cleanup: {len(shims)} shim(s) still alive after `tessera down`; terminating", flush=True)
        tasks = [child for pid in shims for child in _children(pid)]
        for pid in shims:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and shim_pids(cluster.home):
            time.sleep(0.5)
        for pid in [*shim_pids(cluster.home), *tasks]:
            _signal(pid, signal.SIGKILL)
    try:
        agent = cluster.agent_pid()
    except AssertionError:
        return
    print(f"  cleanup: agent {agent} still alive after `tessera down`; killing", flush=True)
    _signal(agent, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def local_cluster(keep: bool) -> Iterator[LocalCluster]:
    """A fresh cluster in a throwaway home; `tessera down` (and a sweep for leftovers) on exit."""
    home = Path(tempfile.mkdtemp(prefix="tessera-bench-exec-"))
    cluster = LocalCluster(home=home)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            print(f"  `tessera down` failed: {exc!r}", flush=True)
            if cluster.up is not None and cluster.up.poll() is None:
                cluster.up.kill()
                cluster.up.wait()
        _kill_leftovers(cluster)
        if keep:
            print(f"  kept {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)


def client_for(cluster: LocalCluster) -> httpx.Client:
    return httpx.Client(
        base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=60
    )


def job_body(name: str, command: list[str], cpu: str, memory: str) -> dict[str, Any]:
    return {"name": name, "groups": [{"command": command, "resources": {"cpu": cpu, "memory": memory}}]}


@dataclass
class Submitted:
    submitted_at: dict[str, datetime] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.submitted_at) / self.wall_s if self.wall_s > 0 else math.nan


def submit_jobs(
    cluster: LocalCluster,
    names: list[str],
    command: list[str],
    cpu: str,
    memory: str,
    rate: float | None,
    threads: int,
) -> Submitted:
    """Submit one job per name: paced at ``rate`` per second from one client, or (None) a burst."""
    result = Submitted()
    lock = threading.Lock()

    def one(http: httpx.Client, name: str) -> None:
        try:
            r = http.post("/api/v1/jobs", json=job_body(name, command, cpu, memory))
        except httpx.HTTPError as exc:
            with lock:
                result.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return
        with lock:
            if r.status_code == 201:
                result.submitted_at[name] = datetime.fromisoformat(r.json()["status"]["submitted_at"])
            else:
                result.errors.append(f"{name}: HTTP {r.status_code}: {r.text[:200]}")

    start = time.perf_counter()
    if rate is not None:
        with client_for(cluster) as http:
            for i, name in enumerate(names):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                one(http, name)
    else:
        local = threading.local()
        clients: list[httpx.Client] = []

        def mine() -> httpx.Client:
            if not hasattr(local, "http"):
                local.http = client_for(cluster)
                with lock:
                    clients.append(local.http)
            http: httpx.Client = local.http
            return http

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda n: one(mine(), n), names))
        for http in clients:
            http.close()
    result.wall_s = time.perf_counter() - start
    return result


def job_states(http: httpx.Client, search: str) -> dict[str, str]:
    """name -> state of every job whose name contains ``search``."""
    states: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"q": search, "limit": PAGE}
        if cursor:
            params["continue"] = cursor
        r = http.get("/api/v1/jobs", params=params)
        r.raise_for_status()
        page = r.json()
        states.update({job["name"]: job["status"]["state"] for job in page["items"]})
        cursor = page.get("continue")
        if not cursor:
            return states


def wait_for(
    http: httpx.Client, search: str, names: set[str], done: Callable[[str], bool], timeout: float, what: str
) -> tuple[dict[str, str], float]:
    """Poll until every job in ``names`` satisfies ``done(state)``; return the states and seconds waited."""
    start = time.monotonic()
    last_print = start
    while True:
        states = job_states(http, search)
        waiting = [n for n in names if not done(states.get(n, "?"))]
        now = time.monotonic()
        if not waiting or now - start > timeout:
            if waiting:
                print(f"  timed out after {timeout:.0f}s: {len(waiting)} job(s) not {what}", flush=True)
            return states, now - start
        if now - last_print > 15:
            counts: dict[str, int] = {}
            for n in names:
                counts[states.get(n, "?")] = counts.get(states.get(n, "?"), 0) + 1
            print(f"  {now - start:.0f}s: {len(waiting)} not {what} yet; {counts}", flush=True)
            last_print = now
        time.sleep(0.5)


# 1. latency ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass
class Latency:
    mode: str
    jobs: int
    submitted: Submitted
    final_states: dict[str, int]
    missing_running: int
    to_scheduled_s: list[float]
    scheduled_to_running_s: list[float]
    to_running_s: list[float]
    moments: dict[str, list[datetime]] = field(default_factory=dict)

    def spread(self, what: str) -> str:
        """How long the ``what`` moments (submitted, SCHEDULED, RUNNING) took from first to last."""
        times = self.moments.get(what, [])
        if len(times) < 2:
            return f"{what}: n/a"
        span = (max(times) - min(times)).total_seconds()
        return f"{what} {span:.1f}s ({(len(times) - 1) / span:.1f}/s)" if span else f"{what} 0s"


def bench_latency(args: argparse.Namespace, mode: str) -> Latency:
    rate = args.rate if mode == "steady" else None
    prefix = f"lat-{mode}-"
    names = [f"{prefix}{i}" for i in range(args.jobs)]
    with local_cluster(args.keep) as cluster:
        how = f"at {rate:g}/s" if rate else f"in one burst from {args.burst_threads} threads"
        print(f"latency/{mode}: submitting {args.jobs} `sleep 1` jobs {how} ...", flush=True)
        load = os.getloadavg()[0]
        submitted = submit_jobs(
            cluster, names, ["sleep", "1"], args.cpu, args.memory, rate, args.burst_threads
        )
        print(
            f"  submitted {len(submitted.submitted_at)} in {submitted.wall_s:.1f}s "
            f"({submitted.rate:.1f}/s), {len(submitted.errors)} errors",
            flush=True,
        )
        for error in submitted.errors[:5]:
            print(f"  error: {error}")
        with client_for(cluster) as http:
            states, waited = wait_for(
                http, prefix, set(submitted.submitted_at), lambda s: s in TERMINAL, args.timeout, "ended"
            )
            print(
                f"  all ended {waited:.1f}s after the last submit (load avg 1m: {load:.2f} -> "
                f"{os.getloadavg()[0]:.2f})",
                flush=True,
            )
            to_scheduled, scheduled_to_running, to_running = [], [], []
            missing = 0
            moments: dict[str, list[datetime]] = {"submitted": [], "SCHEDULED": [], "RUNNING": []}
            for name, submitted_at in submitted.submitted_at.items():
                r = http.get(f"/api/v1/jobs/{name}/events")
                r.raise_for_status()
                first: dict[str, datetime] = {}
                for event in r.json():
                    to = event.get("to_state")
                    if to and to not in first:
                        first[to] = datetime.fromisoformat(event["at"])
                moments["submitted"].append(submitted_at)
                for what in ("SCHEDULED", "RUNNING"):
                    if what in first:
                        moments[what].append(first[what])
                if "SCHEDULED" in first:
                    to_scheduled.append((first["SCHEDULED"] - submitted_at).total_seconds())
                if "RUNNING" not in first:
                    missing += 1
                    continue
                to_running.append((first["RUNNING"] - submitted_at).total_seconds())
                if "SCHEDULED" in first:
                    scheduled_to_running.append((first["RUNNING"] - first["SCHEDULED"]).total_seconds())
    counts: dict[str, int] = {}
    for name in submitted.submitted_at:
        counts[states.get(name, "?")] = counts.get(states.get(name, "?"), 0) + 1
    return Latency(
        mode, args.jobs, submitted, counts, missing, to_scheduled, scheduled_to_running, to_running, moments
    )


# 2. footprint --------------------------------------------------------------------------------------


@dataclass
class Live:
    requested: int
    running: int
    submit_s: float
    to_all_running_s: float
    errors: list[str]
    idle: Footprint
    loaded: Footprint | None


def bench_live(args: argparse.Namespace) -> Live:
    prefix = "live-"
    names = [f"{prefix}{i}" for i in range(args.live)]
    with local_cluster(args.keep) as cluster:
        assert cluster.up is not None
        pids = {"agent": cluster.agent_pid(), "control plane": cluster.up.pid}
        print(
            f"footprint: idle baseline for {args.idle_seconds:g}s (agent pid {pids['agent']}, "
            f"control plane pid {pids['control plane']}) ...",
            flush=True,
        )
        time.sleep(2)  # let the start settle
        idle = sample(pids, [], args.idle_seconds, 0)
        print(f"footprint: submitting {args.live} `sleep 600` jobs ...", flush=True)
        submitted = submit_jobs(
            cluster, names, ["sleep", "600"], args.cpu, args.memory, None, args.burst_threads
        )
        print(
            f"  submitted {len(submitted.submitted_at)} in {submitted.wall_s:.1f}s, "
            f"{len(submitted.errors)} errors",
            flush=True,
        )
        for error in submitted.errors[:5]:
            print(f"  error: {error}")
        with client_for(cluster) as http:
            states, waited = wait_for(
                http, prefix, set(submitted.submitted_at), lambda s: s == "RUNNING", args.timeout, "RUNNING"
            )
        running = sum(1 for n in submitted.submitted_at if states.get(n) == "RUNNING")
        print(f"  {running} RUNNING {waited:.1f}s after the last submit", flush=True)
        loaded = None
        if running:
            time.sleep(args.settle_seconds)  # let the last launches and reports finish
            shims = shim_pids(cluster.home)
            print(
                f"  sampling for {args.sample_seconds:g}s ({len(shims)} shims; load avg 1m "
                f"{os.getloadavg()[0]:.2f}) ...",
                flush=True,
            )
            loaded = sample(pids, shims, args.sample_seconds, running)
        print("  stopping (tessera down cancels the jobs) ...", flush=True)
        return Live(args.live, running, submitted.wall_s, waited, submitted.errors, idle, loaded)


# output --------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns are text (left-aligned), the rest numbers."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i < left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = (
        "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def latency_table(results: list[Latency]) -> str:
    header = [
        "mode",
        "interval",
        "jobs",
        "submit rate (/s)",
        "n",
        "p50 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "max (ms)",
    ]
    rows = []
    for r in results:
        label = r.mode
        for interval, values in (
            ("submit -> SCHEDULED", r.to_scheduled_s),
            ("SCHEDULED -> RUNNING", r.scheduled_to_running_s),
            ("submit -> RUNNING", r.to_running_s),
        ):
            ms = [v * 1000 for v in values]
            rows.append(
                [
                    label,
                    interval,
                    str(r.jobs),
                    f"{r.submitted.rate:.1f}",
                    str(len(ms)),
                    *(f"{percentile(ms, q):.0f}" for q in (0.50, 0.95, 0.99)),
                    f"{max(ms):.0f}" if ms else "nan",
                ]
            )
    return table(header, rows, left=2)


def footprint_table(live: Live) -> str:
    header = [
        "tasks",
        "process",
        "count",
        "RSS mean (MiB)",
        "RSS max (MiB)",
        "PSS (MiB)",
        "CPU (% of a core)",
    ]
    rows = []
    for fp in [live.idle, *([live.loaded] if live.loaded else [])]:
        for u in fp.usages:
            pss = f"{u.pss_mib:.1f}" if u.pss_mib is not None else "-"
            rows.append(
                [
                    str(fp.tasks),
                    u.what,
                    str(u.processes),
                    f"{u.rss_mib_mean:.1f}",
                    f"{u.rss_mib_max:.1f}",
                    pss,
                    f"{u.cpu_pct:.1f}",
                ]
            )
    return table(header, rows, left=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.execution",
        description="Submit-to-running latency and the node agent's footprint.",
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per latency mode (default 200; 0 skips)")
    parser.add_argument(
        "--live", type=int, default=200, help="live tasks for the footprint (default 200; 0 skips)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="latency modes: steady,burst (default both)")
    parser.add_argument("--rate", type=float, default=20.0, help="steady submit rate per second (default 20)")
    parser.add_argument("--burst-threads", type=int, default=8, help="client threads for bursts (default 8)")
    parser.add_argument("--cpu", default="10m", help="cpu request per job (default 10m)")
    parser.add_argument("--memory", default="16Mi", help="memory request per job (default 16Mi)")
    parser.add_argument("--sample-seconds", type=float, default=20.0, help="footprint window (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle baseline window (default 10)")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=5.0,
        help="wait after all are RUNNING before sampling (default 5)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="max wait per phase, seconds (default 600)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the throwaway TESSERA_HOMEs (logs)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - set(MODES):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    if args.jobs < 0 or args.live < 0 or args.rate <= 0 or args.burst_threads < 1:
        parser.error("--jobs/--live must be >= 0, --rate > 0, --burst-threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    latencies = [bench_latency(args, mode) for mode in args.modes] if args.jobs else []
    live = bench_live(args) if args.live else None
    failed = False
    if latencies:
        print()
        print(
            f"Submit-to-running latency ({args.jobs} `sleep 1` jobs per mode, cpu {args.cpu}, "
            f"memory {args.memory}; steady = {args.rate:g}/s from one client, "
            f"burst = {args.burst_threads} client threads):"
        )
        print()
        print(latency_table(latencies))
        for r in latencies:
            print(
                f"- {r.mode}: final states {r.final_states}; {len(r.submitted.errors)} submit errors; "
                f"{r.missing_running} job(s) without a RUNNING event; first to last: "
                + ", ".join(r.spread(what) for what in ("submitted", "SCHEDULED", "RUNNING"))
            )
            failed = failed or bool(r.submitted.errors) or r.missing_running > 0
    if live is not None:
        print()
        print(
            f"Footprint ({live.running}/{live.requested} `sleep 600` tasks RUNNING, "
            f"{live.to_all_running_s:.1f}s after the last of {live.requested} submits "
            f"(submitted in {live.submit_s:.1f}s); windows: idle {live.idle.window_s:.1f}s, "
            f"loaded {live.loaded.window_s if live.loaded else math.nan:.1f}s):"
        )
        print()
        print(footprint_table(live))
        failed = failed or bool(live.errors) or live.running < live.requested
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
