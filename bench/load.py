"""Load test: many concurrent submitters with client-side faults; exactly-once and the API's SLOs.

Per database, starts a real control plane (``tessera up --no-agent --no-gateway``) with projects,
queues, users (the clients spread over them) and simulated nodes kept Ready by heartbeats, so the
scheduler binds while the API is flooded. Each client submits its share of the jobs, each with its
own Idempotency-Key, and reads like a user does (GET one of its jobs, list its project's).

Faults, on the client side: a share of submissions is sent twice (after the first answer, as if
the response was lost; or both at once, a retry racing the original), a share with a timeout so
short the answer is lost; timeouts, connection errors, 5xx and 429 (after its Retry-After) are
retried with the same key. Afterwards the database and the list API are checked: every key that
was answered maps to exactly one stored job, the same one every answer named; nothing else stored.

Run: ``.venv/bin/python -m bench.load [--clients 50] [--submissions 20000] [--rate R] [--db both] [--quick]``.
With ``--rate`` the load is open: submissions are offered at R per second (the SLOs hold at a
stated load); without it each client sends its next one as soon as it is answered (saturation).
Prints markdown tables and writes ``bench/results/load.json`` and ``bench/results/load.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench.api_submit import stop_postgres
from bench.loadlib import OPERATIONS, LoadConfig, LoadResult, control_plane, run_load
from tessera.platform.slos import render_markdown
from tests.pg import start_postgres

DATABASES = ("sqlite", "postgres")
RESULTS = Path(__file__).parent / "results"
QUICK = {"clients": 10, "submissions": 500}


def run_database(
    database: str,
    config: LoadConfig,
    fairness: bool = True,
    lease_seconds: float | None = None,
    echo: bool = False,
) -> LoadResult:
    """One control plane on ``database`` (a throwaway PostgreSQL server for ``postgres``), loaded."""
    env = {"TESSERA_API_FAIRNESS": "true" if fairness else "false"}
    if lease_seconds is not None:
        env["TESSERA_LEADER_LEASE_SECONDS"] = str(lease_seconds)
    if database == "sqlite":
        with control_plane(None, env) as server:
            return run_load(server, database, config, fairness, echo)
    pg = start_postgres()
    try:
        pg.execute("CREATE DATABASE load")
        with control_plane(pg.url("load"), env) as server:
            return run_load(server, database, config, fairness, echo)
    finally:
        stop_postgres(pg)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, first column left-aligned and the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _name(r: LoadResult) -> str:
    return f"{r.database}{'' if r.fairness else ' (no fairness)'}"


def latency_table(results: list[LoadResult]) -> str:
    rows = [
        [
            _name(r),
            op,
            str(len(r.tally.latencies[op])),
            f"{r.rate(op):.1f}",
            _ms(r.percentile_ms(op, 0.50)),
            _ms(r.percentile_ms(op, 0.99)),
            _ms(r.percentile_ms(op, 1.0)),
        ]
        for r in results
        for op in OPERATIONS
    ]
    return table(["database", "operation", "answered", "per s", "p50 (ms)", "p99 (ms)", "max (ms)"], rows)


def run_table(results: list[LoadResult]) -> str:
    rows = [
        [
            _name(r),
            str(r.clients),
            str(r.users),
            str(r.submissions),
            f"{r.offered:g}" if r.offered else "closed loop",
            f"{r.wall_s:.1f}",
            f"{r.verification.keys_accepted / r.wall_s:.1f}" if r.wall_s else "-",
            f"{r.server_cpu_pct:.0f}",
            f"{r.client_cpu_pct:.0f}",
        ]
        for r in results
    ]
    header = [
        "database",
        "clients",
        "users",
        "submissions",
        "offered (jobs/s)",
        "wall (s)",
        "jobs/s",
        "server CPU %",
        "client CPU %",
    ]
    return table(header, rows)


def faults_table(results: list[LoadResult]) -> str:
    rows = [
        [
            _name(r),
            str(r.tally.duplicates_sent),
            str(r.tally.replays),
            str(r.tally.injected_timeouts),
            str(r.tally.timeouts - r.tally.injected_timeouts),
            str(r.tally.throttled),
            f"{r.tally.throttle_wait_s:.1f}",
            str(r.tally.server_errors),
            str(r.tally.connection_errors),
            str(r.tally.rejected),
            str(r.tally.gave_up),
        ]
        for r in results
    ]
    header = [
        "database",
        "sent twice",
        "replays (200)",
        "injected timeouts",
        "other timeouts",
        "429s",
        "429 wait (s)",
        "5xx",
        "conn errors",
        "rejected 4xx",
        "gave up",
    ]
    return table(header, rows)


def nodes_table(results: list[LoadResult]) -> str:
    rows = [
        [
            _name(r),
            f"{r.job_seconds:g} s" if r.job_seconds else "never started",
            str(r.nodes.started),
            str(r.nodes.finished),
            str(r.nodes.report_calls),
            str(r.nodes.relists),
            str(len(r.nodes.errors)),
        ]
        for r in results
    ]
    header = ["database", "jobs run for", "tasks started", "tasks finished", "reports", "re-lists", "errors"]
    return table(header, rows)


def exactly_once_table(results: list[LoadResult]) -> str:
    rows = []
    for r in results:
        v = r.verification
        rows.append(
            [
                _name(r),
                str(v.keys_sent),
                str(v.keys_accepted),
                str(v.stored_jobs),
                str(v.stored_keys),
                str(v.api_listed),
                str(v.lost),
                str(v.duplicates),
                str(v.answers_disagree + v.created_twice),
                str(v.unacknowledged),
                "yes" if v.exactly_once else "NO",
            ]
        )
    header = [
        "database",
        "keys sent",
        "keys accepted",
        "jobs stored",
        "keys stored",
        "listed by API",
        "lost",
        "duplicates",
        "answers disagree",
        "stored, unanswered",
        "exactly once",
    ]
    return table(header, rows)


def report(results: list[LoadResult]) -> str:
    parts = [
        "## Load: concurrent submitters with retries\n",
        run_table(results),
        "\n### API latency (answered requests; retries are separate requests)\n",
        latency_table(results),
        "\n### Faults injected and met\n",
        faults_table(results),
        "\n### The simulated nodes' agents\n",
        nodes_table(results),
        "\n### Exactly once\n",
        exactly_once_table(results),
    ]
    for r in results:
        parts += [f"\n### SLOs over the load window: {_name(r)}\n", render_markdown(r.slos).rstrip()]
    samples = [f"- {_name(r)}: {s}" for r in results for s in r.tally.error_samples]
    if samples:
        parts += ["\n### Error samples\n", "\n".join(samples)]
    return "\n".join(parts) + "\n"


def write(out: Path, results: list[LoadResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.md").write_text(report(results))
    (out / "load.json").write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--submissions", type=int, default=20_000, help="jobs submitted per database")
    parser.add_argument(
        "--users", type=int, default=10, help="users the clients are spread over (default 10)"
    )
    parser.add_argument("--db", choices=[*DATABASES, "both"], default="both", help="database (default both)")
    parser.add_argument(
        "--fairness",
        choices=["on", "off", "both"],
        default="on",
        help="the API's rate and concurrency limits (TESSERA_API_FAIRNESS); both: a row each",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="the leader lease's term (TESSERA_LEADER_LEASE_SECONDS); default the server's",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offered submissions per second, open loop (default: closed loop, as fast as answered)",
    )
    parser.add_argument(
        "--job-seconds",
        type=float,
        default=10.0,
        help="how long stand-in agents run each bound job (default 10); 0: never, the backlog grows",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"small: {QUICK['clients']} clients, {QUICK['submissions']} jobs"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where load.json and load.md go")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.submissions = QUICK["clients"], QUICK["submissions"]
    if args.clients < 1 or args.submissions < 1 or args.users < 1:
        parser.error("--clients, --submissions and --users must be at least 1")
    if args.job_seconds < 0:
        parser.error("--job-seconds must be 0 (never run) or more")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be a positive number of submissions per second")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = LoadConfig(
        clients=args.clients,
        submissions=args.submissions,
        users=min(args.users, args.clients),
        rate=args.rate,
        job_seconds=args.job_seconds,
    )
    databases = DATABASES if args.db == "both" else (args.db,)
    fairness = {"on": (True,), "off": (False,), "both": (True, False)}[args.fairness]
    results = []
    for database in databases:
        for fair in fairness:
            label = f"{database}{'' if fair else ' (no fairness)'}"
            print(f"{label}: {config.submissions} submissions from {config.clients} clients ...", flush=True)
            result = run_database(database, config, fair, args.lease_seconds, echo=True)
            print(f"{label}: done in {result.wall_s:.1f}s", flush=True)
            results.append(result)
            write(args.out, results)  # after each run: a long one that is stopped keeps the rest
    print()
    print(report(results))
    return 0 if all(r.verification.exactly_once for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
