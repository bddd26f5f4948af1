"""The load test, small (``python -m bench.load --quick``): concurrent submitters that send some
requests twice, at once or after a lost answer, and retry with the same Idempotency-Key, against a
real control plane on each database, while stand-in node agents run what is bound. Every accepted
key is stored as exactly one job."""

from __future__ import annotations

import uuid

import pytest

from bench.load import QUICK
from bench.loadlib import LoadConfig, LoadResult, control_plane, run_load
from tests.pg import PostgresServer

CONFIG = LoadConfig(
    clients=QUICK["clients"], submissions=QUICK["submissions"], users=5, projects=3, nodes=2, job_seconds=2.0
)


def _check(result: LoadResult) -> None:
    v, tally = result.verification, result.tally
    assert tally.duplicates_sent > 0 and tally.injected_timeouts > 0, "the faults were not injected"
    # every request sent twice is answered twice: once created, once replayed (200)
    assert tally.replays >= tally.duplicates_sent
    assert tally.rejected == 0 and tally.gave_up == 0, tally.error_samples
    assert v.keys_sent == v.keys_accepted == CONFIG.submissions
    assert v.lost == 0 and v.duplicates == 0 and v.unacknowledged == 0
    assert v.answers_disagree == 0 and v.created_twice == 0
    assert v.stored_jobs == v.stored_keys == v.api_listed == CONFIG.submissions
    assert v.exactly_once
    assert len(tally.latencies["submit"]) >= CONFIG.submissions
    assert {r.slo.name for r in result.slos} >= {"api-latency", "api-errors"}
    # the stand-in agents ran bound jobs and ended them, so slices were freed and bound again
    assert result.nodes.errors == [] and result.nodes.finished > 0, result.nodes
    assert result.nodes.started >= result.nodes.finished


def test_quick_load_is_exactly_once_on_sqlite() -> None:
    with control_plane(None) as server:
        _check(run_load(server, "sqlite", CONFIG))


@pytest.mark.postgres
def test_quick_load_is_exactly_once_on_postgres(pg_server: PostgresServer) -> None:
    name = f"load_{uuid.uuid4().hex[:12]}"
    pg_server.execute(f"CREATE DATABASE {name}")
    with control_plane(pg_server.url(name)) as server:
        _check(run_load(server, "postgres", CONFIG))
