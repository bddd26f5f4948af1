"""The leader lease and fencing on both databases, the election loop, and two real control-plane
replicas on one PostgreSQL where the leader is killed (-9) and the other takes over."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tessera.platform.app import create_app
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.leader import Leader, Lease, migration_lock, replica_name
from tessera.platform.settings import Settings
from tessera.platform.store import migrate
from tessera.platform.store.db import Database, Fenced
from tessera.platform.store.rows import AllocationRow, AttemptRow, ChangeRow, JobRow, LeaseRow
from tests.conftest import Api, job_body
from tests.e2e.cluster import wait_until
from tests.pg import PostgresServer, free_port
from tests.platform.test_execution import node

TESSERA = str(Path(sys.executable).with_name("tessera"))


def expire(db: Database) -> None:
    """Make the lease lapse now, as if its holder had stopped renewing a term ago."""
    with db.transaction() as session:
        session.execute(update(LeaseRow).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))


def lease(db: Database, holder: str, term: float = 30.0) -> Lease:
    made = Lease(db, holder, term)
    made.ensure()
    return made


def changes(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(ChangeRow)).scalar_one())


def write_one(db: Database) -> None:
    with db.write() as tx:
        tx.record("test", uuid.uuid4(), "put", {})


# --- the lease -------------------------------------------------------------------------------


def test_acquire_renew_expire_and_take_over(db: Database) -> None:
    a, b = lease(db, "a"), lease(db, "b")
    a.ensure()  # a second ensure keeps the row as it is
    assert b.available() == (True, 0)  # created expired, held by nobody
    assert a.acquire() == 1
    assert b.available() == (False, 1) and b.acquire() is None
    assert a.renew(1) and not a.renew(0)  # only the term it holds
    assert a.read() is not None and a.read().holder == "a"  # type: ignore[union-attr]

    expire(db)
    assert b.available() == (True, 1)
    assert b.acquire() == 2
    state = b.read()
    assert state is not None and (state.holder, state.epoch) == ("b", 2)
    assert not a.renew(1)  # the old term is over for good
    assert a.acquire() is None  # b's lease is fresh

    # a replica restarted under the same name need not wait: a new term, a new epoch
    assert lease(db, "b").acquire() == 3
    assert not b.renew(2) and b.renew(3)


def test_a_fenced_write_by_a_stale_leader_is_refused_and_changes_nothing(db: Database) -> None:
    a, b = lease(db, "a"), lease(db, "b")
    epoch = a.acquire()
    assert epoch == 1
    fenced = db.fenced(a.fence(epoch))
    write_one(fenced)  # the leader's own write goes through
    assert changes(db) == 1

    expire(db)
    assert b.acquire() == 2
    revision = db.current_revision()
    with pytest.raises(Fenced):
        write_one(fenced)
    assert changes(db) == 1 and db.current_revision() == revision  # rolled back, revision too
    write_one(db)  # unfenced writers (the API) are not affected
    write_one(db.fenced(b.fence(2)))
    assert changes(db) == 3


def test_release_hands_over_at_once_and_only_for_the_holder(db: Database) -> None:
    a, b, c = lease(db, "a"), lease(db, "b"), lease(db, "c")
    assert a.acquire() == 1
    a.release(1)
    assert b.available() == (True, 1) and b.acquire() == 2
    a.release(1)  # a stale release touches nothing
    assert c.available() == (False, 2) and c.acquire() is None and b.renew(2)


def test_a_deposed_scheduler_binds_nothing_its_successor_binds_once(api: Api) -> None:
    node(api)
    a, b = lease(api.db, "a"), lease(api.db, "b")
    assert a.acquire() == 1
    deposed = SchedulingLoop(api.db.fenced(a.fence(1)))
    deposed.sync()  # it has its view from its term
    expire(api.db)
    assert b.acquire() == 2
    api.call("POST", "/api/v1/jobs", json=job_body("j", gpus=1))  # the API is never fenced
    with pytest.raises(Fenced):
        deposed.step()  # it decides to bind j, and the write is refused
    assert api.call("GET", "/api/v1/jobs/j").json()["status"]["state"] == "PENDING"
    SchedulingLoop(api.db.fenced(b.fence(2))).step()
    job = api.call("GET", "/api/v1/jobs/j").json()
    assert job["status"]["state"] == "SCHEDULED" and job["status"]["attempt"] == 0
    assert len(job["allocations"]) == 1


def test_replica_names_are_stable_per_home_unless_configured(tmp_path: Path) -> None:
    one, other = Settings(home=tmp_path / "one"), Settings(home=tmp_path / "other")
    assert replica_name(one) == replica_name(Settings(home=tmp_path / "one"))  # a restart keeps it
    assert replica_name(one) != replica_name(other)
    assert replica_name(Settings(home=tmp_path / "one", replica_name="cp-0")) == "cp-0"


# --- the election loop -----------------------------------------------------------------------


@dataclass
class Terms:
    """A start_term that records each term and runs one stand-in controller per term."""

    started: list[int]
    tasks: list[asyncio.Task[None]]

    def __call__(self, db: Database, epoch: int) -> list[asyncio.Task[None]]:
        self.started.append(epoch)
        task = asyncio.create_task(asyncio.sleep(3600))
        self.tasks.append(task)
        return [task]


async def until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.05)


def test_leaders_take_turns_step_down_and_release(db: Database) -> None:
    async def scenario() -> None:
        terms_a, terms_b = Terms([], []), Terms([], [])
        a = Leader(Lease(db, "a", term=2.0), terms_a)
        b = Leader(Lease(db, "b", term=2.0), terms_b)
        run_a = asyncio.create_task(a.run())
        await until(lambda: a.is_leader)
        run_b = asyncio.create_task(b.run())
        await until(lambda: b.seen_epoch == 1)  # b has looked at the lease, and left it
        assert not b.is_leader and terms_b.started == []

        run_a.cancel()  # a graceful shutdown: a's controllers stop, its lease is released
        await asyncio.gather(run_a, return_exceptions=True)
        assert terms_a.tasks[0].cancelled() and not a.is_leader
        await until(lambda: b.is_leader)
        assert b.epoch == 2 and terms_b.started == [2]

        # someone else takes the lease (b was too slow to renew): b steps down at its next renewal
        expire(db)
        thief = Lease(db, "x", term=2.0)
        assert thief.acquire() == 3
        await until(lambda: not b.is_leader)
        await until(lambda: terms_b.tasks[0].done())
        assert terms_b.tasks[0].cancelled()
        # the thief never renews: its lease lapses and b leads again, in a new term
        await until(lambda: b.is_leader)
        assert b.epoch == 4 and terms_b.started == [2, 4]
        run_b.cancel()
        await asyncio.gather(run_b, return_exceptions=True)
        state = b.lease.read()
        assert state is not None and state.holder == "b" and b.lease.available()[0] is True

    asyncio.run(scenario())


def test_readyz_and_metrics_say_who_leads(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", replica_name="r1", leader_lease_seconds=2.0)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").json()["leader"], 30, what="r1 to lead")
        assert client.get("/readyz").json() == {
            "status": "ready",
            "leader": True,
            "replica": "r1",
            "epoch": 1,
        }
        admin = {"Authorization": f"Bearer {app.state.bootstrap_secret}"}
        r = client.post("/api/v1/users", headers=admin, json={"name": "prom"})
        assert r.status_code == 201, r.text
        body = {"name": "prom-token", "user": "prom", "scopes": ["metrics"]}
        r = client.post("/api/v1/tokens", headers=admin, json=body)
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {r.json()['secret']}"}).text
        assert "tessera_leader 1.0" in scrape and "tessera_leader_epoch 1.0" in scrape
    # the shutdown released the lease: the next replica leads at once, in a new term
    db = Database(settings.resolved_database_url)
    try:
        follower = Lease(db, "r2", 2.0)
        assert follower.available() == (True, 1) and follower.acquire() == 2
    finally:
        db.dispose()


def test_replicas_starting_together_migrate_in_turn(pg_server: PostgresServer) -> None:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    pg_server.execute(f"CREATE DATABASE {name}")
    db = Database(pg_server.url(name))
    entered: list[str] = []

    def second() -> None:
        with migration_lock(db):
            entered.append("second")
            migrate.upgrade(db.engine)

    try:
        with migration_lock(db):
            waiter = threading.Thread(target=second)
            waiter.start()
            waiter.join(timeout=1.0)
            assert waiter.is_alive() and entered == []  # it waits for the first to finish
            migrate.upgrade(db.engine)
        waiter.join(timeout=60)
        assert entered == ["second"] and migrate.is_current(db.engine)  # its upgrade found nothing to do
    finally:
        db.dispose()


# --- two real replicas on one PostgreSQL -----------------------------------------------------

GPU = {"model": "A100-80GB", "memory_mib": 81920, "simulated": True}


@dataclass
class Replica:
    name: str
    home: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> dict[str, Any] | None:
        if self.process.poll() is not None:
            return None
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=2)
        except httpx.TransportError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def log(self) -> str:
        return (self.home / "up.log").read_text(errors="replace")[-3000:]


def spawn_replica(name: str, root: Path, url: str, lease_s: float = 3.0) -> Replica:
    """`tessera up` without an agent or gateway, against ``url``, named ``name``."""
    home = root / name
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env |= {
        "TESSERA_HOME": str(home),
        "TESSERA_DATABASE_URL": url,
        "TESSERA_REPLICA_NAME": name,
        "TESSERA_LEADER_LEASE_SECONDS": str(lease_s),
        "TESSERA_NODE_HEARTBEAT_TIMEOUT": "600",  # the test's node sends no heartbeats
    }
    port = free_port()
    log = open(home / "up.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [TESSERA, "up", "--port", str(port), "--no-agent", "--no-gateway"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Replica(name, home, port, process)


class Plane:
    """The API of whichever replica a call is sent to, as the bootstrap admin."""

    def __init__(self, token: str) -> None:
        self.token = token

    def call(self, replica: Replica, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        r = httpx.request(method, f"{replica.url}/api/v1{path}", headers=headers, timeout=30, **kw)
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    def node(self, replica: Replica, name: str = "n1", gpus: int = 4) -> None:
        self.call(replica, "POST", "/users", json={"name": f"agent-{name}"})
        body = {"name": f"agent-{name}-token", "user": f"agent-{name}", "scopes": ["node"]}
        token = self.call(replica, "POST", "/tokens", json=body)["secret"]
        inventory = {
            "gpus": [{**GPU, "uuid": f"GPU-{name}-{i}", "index": i} for i in range(gpus)],
            "cpu": 64,
            "memory": "256Gi",
            "simulated": True,
        }
        self.call(replica, "POST", "/nodes", token=token, json={"name": name, "inventory": inventory})

    def submit(self, replica: Replica, name: str) -> None:
        body = {
            "name": name,
            "groups": [{"command": ["python", "-c", "1"], "resources": {"gpu_memory": "2Gi"}}],
        }
        self.call(replica, "POST", "/jobs", json=body)

    def states(self, replica: Replica) -> dict[str, str]:
        items = self.call(replica, "GET", "/jobs", params={"limit": 500})["items"]
        return {j["name"]: j["status"]["state"] for j in items}


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    name = f"ha_{uuid.uuid4().hex[:12]}"
    pg_server.execute(f"CREATE DATABASE {name}")  # empty: the first replica migrates it
    return pg_server.url(name)


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        # both at once on an empty database: they take turns migrating it
        started += [spawn_replica(name, tmp_path, pg_url) for name in ("a", "b")]
        for replica in started:
            wait_until(replica.ready, 60, what=f"replica {replica.name}\n{replica.log()}")
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGINT)
                try:
                    replica.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
                    replica.process.wait()


def test_killing_the_leader_hands_over_without_deciding_twice(replicas: list[Replica], pg_url: str) -> None:
    a, b = replicas
    # whichever replica bootstrapped the empty database wrote the admin's credentials
    [credentials] = [r.home / "credentials.json" for r in replicas if (r.home / "credentials.json").exists()]
    plane = Plane(json.loads(credentials.read_text())["token"])
    wait_until(lambda: [r.ready()["leader"] for r in replicas].count(True) == 1, 30, what="one leader")  # type: ignore[index]
    leader, follower = (a, b) if a.ready()["leader"] else (b, a)  # type: ignore[index]
    first_epoch = leader.ready()["epoch"]  # type: ignore[index]
    expected = {"status": "ready", "leader": False, "replica": follower.name, "epoch": first_epoch}
    wait_until(lambda: follower.ready() == expected, 30, what="the follower to see the leader's term")

    plane.node(follower)
    before = [f"before-{i}" for i in range(4)]
    for name in before:
        plane.submit(follower, name)  # through the replica that does not schedule
    wait_until(
        lambda: all(plane.states(b)[n] == "SCHEDULED" for n in before), 60, what="the first jobs to bind"
    )

    leader.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    leader.process.wait()
    during = [f"during-{i}" for i in range(3)]
    for name in during:
        plane.submit(follower, name)  # while nobody leads: they wait for the next leader
    wait_until(lambda: (follower.ready() or {}).get("leader"), 60, what=f"a new leader\n{follower.log()}")
    took = time.monotonic() - killed
    after = [f"after-{i}" for i in range(3)]
    for name in after:
        plane.submit(follower, name)
    jobs = before + during + after
    wait_until(
        lambda: all(plane.states(follower)[n] == "SCHEDULED" for n in jobs), 60, what="the new leader to bind"
    )
    print(f"\ntakeover after kill -9: {took:.2f}s (lease term 3s)")  # noqa: T201 - the measurement

    state = follower.ready()
    assert state is not None and state["epoch"] == first_epoch + 1
    report = plane.call(follower, "GET", "/admin/check")
    assert report["ok"], report["problems"]
    db = Database(pg_url)
    try:
        with db.read() as session:
            ids = dict(session.execute(select(JobRow.name, JobRow.id)).all())
            attempts = dict(
                session.execute(select(AttemptRow.job_id, func.count()).group_by(AttemptRow.job_id)).all()
            )
            allocations = dict(
                session.execute(
                    select(AllocationRow.job_id, func.count()).group_by(AllocationRow.job_id)
                ).all()
            )
    finally:
        db.dispose()
    # every job bound exactly once: one attempt, one slice (its one task)
    assert {n: attempts.get(ids[n]) for n in jobs} == {n: 1 for n in jobs}
    assert {n: allocations.get(ids[n]) for n in jobs} == {n: 1 for n in jobs}
