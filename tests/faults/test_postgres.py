"""PostgreSQL stopped and started under a running control plane: the API answers 503 problem
documents meanwhile (it neither hangs nor dies), and it recovers without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import FaultCluster, pg_start, pg_stop, record, submit, wait_until
from tests.pg import PostgresServer, start_postgres


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A server of this test's own: the session's is shared and must never be stopped."""
    server = start_postgres()
    try:
        server.execute("CREATE DATABASE tessera")
        yield server
    finally:
        server.stop()


def test_postgres_stopped_and_started_control_plane_recovers(own_pg: PostgresServer, tmp_path: Path) -> None:
    cluster = FaultCluster(home=tmp_path / "home", env_extra={"TESSERA_DATABASE_URL": own_pg.url("tessera")})
    cluster.start()
    try:
        # it ends while the database is down: its report must land once it is back
        submit(cluster, "across", ["sh", "-c", "sleep 5; echo across"], gpus=0.5)
        cluster.wait_state("across", "RUNNING")
        pg_stop(own_pg)
        stopped = time.monotonic()
        answers = []
        for method, path, body in (
            ("GET", "/api/v1/jobs", None),
            ("GET", "/api/v1/jobs/across", None),
            ("POST", "/api/v1/jobs", {"name": "meanwhile", "groups": [{"command": ["true"]}]}),
            ("GET", "/api/v1/nodes", None),
        ):
            r = httpx.request(
                method,
                f"{cluster.url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {cluster.token}"},
                timeout=30,
            )
            answers.append((method, path, r.status_code, r.headers.get("content-type")))
        ready = httpx.get(f"{cluster.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
        assert all(a[2] == 503 and a[3] == "application/problem+json" for a in answers), answers
        time.sleep(6)  # `across` ends meanwhile; controllers and the agent keep failing and retrying
        assert cluster.up is not None and cluster.up.poll() is None, "the control plane died"
        pg_start(own_pg)
        down_s = time.monotonic() - stopped
        started = time.monotonic()
        wait_until(lambda: httpx.get(f"{cluster.url}/readyz", timeout=10).status_code == 200, 60)
        recovery = time.monotonic() - started
        job = cluster.wait_state("across", "SUCCEEDED", timeout=60)  # the agent's report landed
        assert job["tasks"][0]["exit_code"] == 0
        submit(cluster, "after", ["sh", "-c", "echo after"], gpus=0.5)  # submissions work again
        cluster.wait_state("after", "SUCCEEDED", timeout=60)  # ...and the scheduler binds again
        settled = time.monotonic() - started
        cluster.assert_consistent()
        assert cluster.up.poll() is None, "the control plane died"  # the same process throughout
        record(
            "PostgreSQL stopped and started",
            database_down_s=round(down_s, 1),
            answers_while_down=sorted({a[2] for a in answers}),
            ready_again_s=round(recovery, 1),
            new_job_succeeded_s=round(settled, 1),
            restarts=0,
        )
    finally:
        cluster.stop()
