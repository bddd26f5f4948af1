"""The load test's data: its configuration, what the clients were told (the ledger), what they
met (the tally), the exactly-once verdict and one run's result."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadnodes import NodeWork
from tessera.platform.slos import SLOResult

READY_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 10  # per logical request: a key that is never accepted after this is "gave up"
OPERATIONS = ("submit", "get", "list")
PROGRESS_S = 30.0


@dataclass(frozen=True)
class Faults:
    """Client-side faults, as fractions of submissions (they do not overlap)."""

    duplicate: float = 0.03  # the response was lost: the same request again after it answered
    race: float = 0.02  # a retry racing the original: the same request twice at once
    timeout: float = 0.01  # the client gives up before the answer (a very short timeout), retries
    timeout_s: float = 0.002


@dataclass(frozen=True)
class Mix:
    """Reads a user makes per submission, like someone checking on their jobs."""

    get: float = 0.25  # GET one of the client's own jobs
    list: float = 0.05  # GET its project's newest 50 jobs


@dataclass(frozen=True)
class LoadConfig:
    clients: int = 50
    submissions: int = 20_000
    users: int = 10
    projects: int = 5
    nodes: int = 4
    gpus_per_node: int = 8
    faults: Faults = field(default_factory=Faults)
    mix: Mix = field(default_factory=Mix)
    seed: int = 12
    # offered submissions per second (open loop: submission i is due at i / rate, whoever is free
    # sends it; late ones go at once); None: closed loop, each client sends its next one at once
    rate: float | None = None
    # how long each bound job runs on the stand-in agents before it succeeds; 0: never started,
    # bound jobs hold their slices and the rest pile up pending (a backlog)
    job_seconds: float = 10.0


@dataclass
class Identity:
    user: str
    project: str
    queue: str
    token: str


@dataclass
class Server:
    url: str
    token: str
    database_url: str
    pid: int
    home: Path


@dataclass
class Progress:
    at_s: float
    accepted: int  # keys answered 200/201 so far
    throttled: int
    server_rss_mib: int


@dataclass
class Tally:
    """What the clients saw: latencies per operation and counts of everything that went wrong."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    statuses: Counter[str] = field(default_factory=Counter)  # "submit 201", "get 200", "list 429", ...
    throttled: int = 0  # 429s (retried after Retry-After)
    throttle_wait_s: float = 0.0
    timeouts: int = 0  # client timeouts, injected or not (retried)
    injected_timeouts: int = 0
    connection_errors: int = 0  # retried
    server_errors: int = 0  # 5xx (retried)
    rejected: int = 0  # other 4xx on a submit: not retried, the key is left unaccepted
    gave_up: int = 0  # keys still unaccepted after MAX_ATTEMPTS
    duplicates_sent: int = 0  # submissions sent twice on purpose (sequential and racing)
    replays: int = 0  # 200s: a repeated key answered with its first job
    error_samples: list[str] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)

    def sample(self, text: str) -> None:
        if len(self.error_samples) < 8:
            self.error_samples.append(text)


@dataclass
class Ledger:
    """Every job id a key was answered with, and how many of those answers said 201 Created."""

    sent: set[str] = field(default_factory=set)
    answers: dict[str, set[str]] = field(default_factory=dict)
    created: Counter[str] = field(default_factory=Counter)

    def accept(self, key: str, job_id: str, created: bool) -> None:
        self.answers.setdefault(key, set()).add(job_id)
        if created:
            self.created[key] += 1


@dataclass
class Verification:
    """The exactly-once check: the clients' ledger against the stored jobs and idempotency keys."""

    keys_sent: int
    keys_accepted: int
    answers_disagree: int  # keys answered with more than one job id
    created_twice: int  # keys answered 201 Created more than once
    stored_jobs: int
    stored_keys: int
    lost: int  # accepted keys whose job is not stored (or is stored under another key)
    duplicates: int  # stored jobs beyond one per key, or without a key
    unacknowledged: int  # stored keys no client was ever answered for (a gave-up retry)
    api_listed: int  # the load's jobs the list API returns (all pages)

    @property
    def exactly_once(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.answers_disagree == 0
            and self.created_twice == 0
            and self.unacknowledged == 0
            and self.stored_jobs == self.keys_accepted
            and self.api_listed == self.stored_jobs
        )


@dataclass
class LoadResult:
    database: str
    fairness: bool
    clients: int
    submissions: int
    users: int
    wall_s: float
    tally: Tally
    verification: Verification
    server_cpu_pct: float
    client_cpu_pct: float
    slos: list[SLOResult] = field(default_factory=list)
    offered: float | None = None  # the offered rate (submissions/s); None: closed loop
    job_seconds: float = 0.0
    nodes: NodeWork = field(default_factory=NodeWork)

    def percentile_ms(self, op: str, q: float) -> float:
        """Nearest-rank percentile of an operation's answered (2xx) requests, in milliseconds."""
        values = sorted(self.tally.latencies[op])
        if not values:
            return math.nan
        return values[max(1, math.ceil(q * len(values))) - 1] * 1000.0

    def rate(self, op: str) -> float:
        return len(self.tally.latencies[op]) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able record (latencies summarised, not listed)."""
        tally = asdict(self.tally)
        tally.pop("latencies")
        tally["statuses"] = dict(self.tally.statuses)  # asdict rebuilds a Counter from pairs
        return {
            "database": self.database,
            "fairness": self.fairness,
            "clients": self.clients,
            "submissions": self.submissions,
            "users": self.users,
            "offered_per_s": self.offered,
            "job_seconds": self.job_seconds,
            "nodes": {**asdict(self.nodes), "errors": self.nodes.errors[:10]},
            "wall_s": round(self.wall_s, 2),
            "server_cpu_pct": round(self.server_cpu_pct, 1),
            "client_cpu_pct": round(self.client_cpu_pct, 1),
            "operations": {
                op: {
                    "count": len(self.tally.latencies[op]),
                    "per_s": round(self.rate(op), 1),
                    "p50_ms": round(self.percentile_ms(op, 0.50), 2),
                    "p99_ms": round(self.percentile_ms(op, 0.99), 2),
                    "max_ms": round(self.percentile_ms(op, 1.0), 2),
                }
                for op in OPERATIONS
            },
            "tally": tally,
            "verification": {**asdict(self.verification), "exactly_once": self.verification.exactly_once},
            "slos": [
                {"name": r.slo.name, "objective": r.slo.objective, "value": r.value, "status": r.status}
                for r in self.slos
            ],
        }
