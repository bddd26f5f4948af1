"""`kill -9` of the control plane at random points, during load and during scheduling.

Each round: a few submitters POST jobs (each with its own Idempotency-Key, retried with the same
key through connection errors); at a random moment (seeded, printed) the control plane gets
SIGKILL, either while submissions are arriving ("load") or once a burst is in and the scheduler is
binding it ("scheduling"); it is started again on the same home and port. Then every submission
that was answered 2xx exists exactly once, nothing else was created, `admin check` finds no GPU
over-committed; at the end every job runs to SUCCEEDED on the simulated GPUs.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultCluster, Submitter, record, seeded_rng, wait_until
from tests.pg import PostgresServer

SUBMITTERS = 3
PER_SUBMITTER = 4
JOB = ["sleep", "0.2"]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    if request.param == "sqlite":
        yield "sqlite", {}
        return
    # a database of its own on the session's server (which this test never stops)
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"faults_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE DATABASE {name}")
    yield "postgres", {"TESSERA_DATABASE_URL": server.url(name)}


ROUNDS = {"sqlite": 7, "postgres": 3}


@pytest.mark.timeout(900)  # ten restarts and a hundred jobs on a loaded 2-core machine
def test_control_plane_kill9_under_load_loses_and_duplicates_nothing(
    database: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    kind, env = database
    rng, seed = seeded_rng(f"control-plane kill -9 on {kind}")
    cluster = FaultCluster(home=tmp_path / "home", env_extra=env).start()
    accepted: dict[str, str] = {}
    retried = 0
    retried_keys = 0
    recoveries: list[float] = []
    try:
        for n in range(ROUNDS[kind]):
            target = 0
            mode = "load" if n % 2 == 0 else "scheduling"
            subs = [
                Submitter(cluster.url, cluster.token, f"r{n}s{i}", PER_SUBMITTER, JOB)
                for i in range(SUBMITTERS)
            ]
            for sub in subs:
                sub.start()
            if mode == "load":  # kill after a random number of answers, while more are on the way
                target = rng.randrange(1, SUBMITTERS * PER_SUBMITTER)
                wait_until(lambda: _answered(subs) >= target, 60, every=0.01)  # noqa: B023
                delay = rng.uniform(0, 0.05)
            else:  # the burst is in: kill while the scheduler binds and starts it
                for sub in subs:
                    sub.join(60)
                delay = rng.uniform(0, 0.6)
            time.sleep(delay)
            cluster.kill9_control_plane()
            killed = time.monotonic()
            cluster.start()  # same home, same port; it reuses the agent, which kept running
            recoveries.append(time.monotonic() - killed)
            for sub in subs:
                sub.join(120)
                assert not sub.is_alive(), f"submitter {sub.prefix} hung"
                assert not sub.problems, sub.problems
                accepted.update(sub.accepted)
                retried += sum(sub.retried.values())
                retried_keys += len(sub.retried)
            at = (
                f"after {target} answers + {delay:.3f}s"
                if mode == "load"
                else f"{delay:.2f}s after the burst"
            )
            print(f"round {n} ({mode}): killed {at}, back in {recoveries[-1]:.1f}s")  # noqa: T201
            _assert_exactly_once(cluster, accepted)
            cluster.assert_consistent()

        submitted = SUBMITTERS * PER_SUBMITTER * ROUNDS[kind]
        assert len(accepted) == submitted  # every submission was eventually accepted
        # nothing was lost on the way: every job runs on the simulated GPUs and succeeds
        wait_until(lambda: _all_done(cluster), 400, every=1, what="every job to finish")
        jobs = _assert_exactly_once(cluster, accepted)
        states = Counter(j["status"]["state"] for j in jobs)
        assert states == {"SUCCEEDED": submitted}, states
        cluster.assert_consistent()
        record(
            f"control plane kill -9 ({kind})",
            seed=seed,
            rounds=ROUNDS[kind],
            submitted=submitted,
            accepted=len(accepted),
            retried_requests=retried,
            submissions_retried_through_a_kill=retried_keys,
            lost=0,
            duplicated=0,
            succeeded=states["SUCCEEDED"],
            recovery_s_max=round(max(recoveries), 2),
            recovery_s_mean=round(sum(recoveries) / len(recoveries), 2),
        )
    finally:
        cluster.stop()


def _assert_exactly_once(cluster: FaultCluster, accepted: dict[str, str]) -> list[dict]:
    """Every accepted submission is one job with the id it was answered with; there is no other."""
    jobs = cluster.jobs()
    by_key = Counter(j["spec"]["labels"].get("fault-key") for j in jobs)
    duplicated = {k: c for k, c in by_key.items() if c > 1}
    assert not duplicated, f"duplicated jobs: {duplicated}"
    lost = set(accepted) - set(by_key)
    assert not lost, f"accepted but lost: {sorted(lost)}"
    stray = set(by_key) - set(accepted)
    assert not stray, f"jobs nobody was answered for: {sorted(map(str, stray))}"
    ids = {j["spec"]["labels"]["fault-key"]: j["id"] for j in jobs}
    assert all(ids[key] == job_id for key, job_id in accepted.items())
    return jobs


def _all_done(cluster: FaultCluster) -> bool:
    return all(j["status"]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for j in cluster.jobs())


def _answered(subs: list[Submitter]) -> int:
    return sum(len(s.accepted) for s in subs)
