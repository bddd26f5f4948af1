"""API fairness: rate and concurrency limits per user, per project and per client address, a
protected lane for node agents, 429s with Retry-After, and the client waiting them out."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from tessera.client.aio import AsyncClient
from tessera.client.client import ApiError, Client
from tessera.client.config import ClientConfig
from tessera.platform.app import create_app
from tessera.platform.fairness import Fairness
from tessera.platform.fairqueue import Refused, Seats
from tessera.platform.settings import Settings
from tests.conftest import Api, job_body

SLOW = 0.01  # a refill rate (per second) no test outlives: a bucket's burst is all there is
INVENTORY = {"name": "n1", "inventory": {"gpus": [], "cpu": 4, "memory": "8Gi"}}


@contextmanager
def limited_api(db_url: str, tmp_path: Path, **limits: Any) -> Iterator[Api]:
    settings = Settings(home=tmp_path / "home", database_url=db_url, **limits)
    app = create_app(settings, run_controllers=False)
    with TestClient(app) as client:
        yield Api(client=client, admin_token=app.state.bootstrap_secret, db=app.state.db)


def fairness_of(api: Api | Served) -> Fairness:
    app: Any = api.client.app if isinstance(api, Api) else api.app
    fairness: Fairness = app.state.fairness
    return fairness


def sample(api: Api | Served, name: str, **labels: str) -> float:
    """A sample of the app's registry (the one /metrics serves)."""
    return fairness_of(api).registry.get_sample_value(name, labels) or 0.0


def assert_refused(r: httpx.Response, limit: str, *names: str) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["status"] == 429 and body["type"] == f"urn:tessera:api-limit:{limit}"
    for name in (limit, *names):
        assert name in body["detail"], body["detail"]


def test_a_noisy_user_is_refused_while_others_and_agents_proceed(db_url: str, tmp_path: Path) -> None:
    with limited_api(db_url, tmp_path, api_user_rate=SLOW, api_user_burst=5) as api:
        noisy, quiet = api.user("noisy"), api.user("quiet")
        node = api.user("agent", role=None, scopes=["node"])
        assert api.call("POST", "/api/v1/nodes", json=INVENTORY, token=node).status_code == 200
        statuses: dict[str, list[int]] = {"noisy": [], "quiet": [], "node": []}
        for i in range(30):
            r = api.call("GET", "/api/v1/jobs", token=noisy)
            statuses["noisy"].append(r.status_code)
            if r.status_code == 429:
                assert_refused(r, "user-rate", "'noisy'")
            if i % 10 == 0:
                statuses["quiet"].append(api.call("GET", "/api/v1/jobs", token=quiet).status_code)
            beat = api.call("POST", "/api/v1/nodes/n1/heartbeat", token=node)
            report = api.call("POST", "/api/v1/nodes/n1/reports", json={"reports": []}, token=node)
            statuses["node"] += [beat.status_code, report.status_code]
        assert statuses["noisy"] == [200] * 5 + [429] * 25
        assert statuses["quiet"] == [200] * 3 and statuses["node"] == [200] * 60
        # the admin (its own lane, no rate limit) is not held back either
        assert all(api.call("GET", "/api/v1/jobs").status_code == 200 for _ in range(20))
        assert sample(api, "tessera_api_fairness_requests_total", lane="user", outcome="refused") == 25
        assert sample(api, "tessera_api_fairness_refusals_total", lane="user", limit="user-rate") == 25
        assert sample(api, "tessera_api_fairness_requests_total", lane="system", outcome="admitted") == 61
        assert sample(api, "tessera_api_fairness_requests_total", lane="system", outcome="refused") == 0


def test_a_project_budget_is_shared_by_its_members_only(db_url: str, tmp_path: Path) -> None:
    with limited_api(db_url, tmp_path, api_project_rate=SLOW, api_project_burst=6) as api:
        for project in ("ml", "cv"):
            assert api.call("POST", "/api/v1/projects", json={"name": project}).status_code == 201
        ann, bob = api.user("ann", project="ml"), api.user("bob", project="ml")
        carl = api.user("carl", project="cv")
        ml = [api.call("GET", "/api/v1/jobs", token=t) for t in (ann, bob) * 4]
        assert [r.status_code for r in ml] == [200] * 6 + [429] * 2
        assert_refused(ml[-1], "project-rate", "'ml'")
        # a request naming the project is charged to it as well
        named = api.call("GET", "/api/v1/jobs", params={"project": "ml"}, token=ann)
        assert_refused(named, "project-rate", "'ml'")
        # cv has its own budget, untouched by ml's members
        assert [api.call("GET", "/api/v1/jobs", token=carl).status_code for _ in range(6)] == [200] * 6


def test_anonymous_callers_are_limited_per_address_and_auth_still_runs(db_url: str, tmp_path: Path) -> None:
    # the limiter may keep a revoked token's identity for a while (here, for the whole test)
    limits = {"api_anonymous_rate": SLOW, "api_anonymous_burst": 3, "api_identity_cache_seconds": 30}
    with limited_api(db_url, tmp_path, **limits) as api:
        token = api.user("rita")
        # revoked: the limiter still knows the token, but authentication answers 401
        tokens = api.call("GET", "/api/v1/tokens", token=token).json()
        assert api.call("POST", f"/api/v1/tokens/{tokens[0]['id']}/revoke", token=token).status_code == 200
        revoked = api.call("GET", "/api/v1/jobs", token=token)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
        statuses = [api.client.get("/api/v1/jobs").status_code for _ in range(5)]
        assert statuses == [401] * 3 + [429] * 2
        assert_refused(api.client.get("/api/v1/jobs"), "anonymous-rate", "testclient")
        # health probes are outside every lane
        assert all(api.client.get("/healthz").status_code == 200 for _ in range(10))
        assert api.call("GET", "/api/v1/jobs").status_code == 200


def test_a_revoked_token_soon_counts_as_anonymous(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tessera.db'}"
    with limited_api(url, tmp_path, api_identity_cache_seconds=0.1) as api:
        token = api.user("rex")
        assert api.call("GET", "/api/v1/jobs", token=token).status_code == 200
        tokens = api.call("GET", "/api/v1/tokens", token=token).json()
        assert api.call("POST", f"/api/v1/tokens/{tokens[0]['id']}/revoke", token=token).status_code == 200
        anonymous = {"lane": "anonymous", "outcome": "admitted"}
        assert sample(api, "tessera_api_fairness_requests_total", **anonymous) == 0

        def charged_as_anonymous() -> bool:
            assert api.call("GET", "/api/v1/jobs", token=token).status_code == 401
            return sample(api, "tessera_api_fairness_requests_total", **anonymous) > 0

        wait_until(charged_as_anonymous, timeout=15)


def test_fairness_off_lets_everything_through(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tessera.db'}"
    with limited_api(url, tmp_path, api_fairness=False, api_user_rate=SLOW, api_user_burst=1) as api:
        token = api.user("free")
        assert [api.call("GET", "/api/v1/jobs", token=token).status_code for _ in range(10)] == [200] * 10
        assert not hasattr(api.client.app.state, "fairness")  # type: ignore[attr-defined]
        metrics = api.user("prom", role=None, scopes=["metrics"])
        scrape = api.call("GET", "/metrics", token=metrics)
        assert scrape.status_code == 200 and "tessera_api_fairness" not in scrape.text


# --- concurrency: a real server, so requests really overlap ----------------------------------


class Served:
    """The app on a real uvicorn on 127.0.0.1, and an admin token."""

    def __init__(self, app: Any, url: str) -> None:
        self.app, self.url = app, url
        self.admin = app.state.bootstrap_secret
        self.http = httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}", **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def user(self, name: str, scopes: list[str] | None = None, project: str | None = "default") -> str:
        assert self.call("POST", "/api/v1/users", json={"name": name}).status_code == 201
        if project:
            r = self.call("PUT", f"/api/v1/projects/{project}/members/{name}", json={"role": "member"})
            assert r.status_code == 200, r.text
        body = {"name": f"{name}-token", "user": name, "scopes": scopes or ["user"]}
        r = self.call("POST", "/api/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])

    def gauge(self, name: str, lane: str) -> float:
        return sample(self, name, lane=lane)


@contextmanager
def served(tmp_path: Path, **limits: Any) -> Iterator[Served]:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 't.db'}", **limits)
    app = create_app(settings, run_controllers=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    api = Served(app, f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        yield api
    finally:
        api.http.close()
        server.should_exit = True
        thread.join(10)


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


class Gated:
    """A request whose body arrives only once ``open()`` is called: it holds its seat till then."""

    def __init__(self, api: Served, token: str) -> None:
        self.gate = threading.Event()
        self.response: httpx.Response | None = None

        def body() -> Iterator[bytes]:
            yield b'{"groups": [{"command": ["true"]'
            self.gate.wait(30)
            yield b"}]}"

        def send() -> None:
            self.response = api.call(
                "POST",
                "/api/v1/jobs",
                token=token,
                content=body(),
                headers={"content-type": "application/json"},
            )

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def open(self) -> httpx.Response:
        self.gate.set()
        self.thread.join(30)
        assert self.response is not None
        return self.response


def in_background(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Start ``call`` in a thread; the returned function joins it and gives its response."""
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()

    def join() -> httpx.Response:
        thread.join(30)
        return out[0]

    return join


def test_concurrency_beyond_a_users_limit_queues_then_refuses(tmp_path: Path) -> None:
    limits = {"api_user_concurrency": 2, "api_queue_length": 1, "api_queue_wait": 30}
    with served(tmp_path, **limits) as api:
        noisy, quiet = api.user("noisy"), api.user("quiet")
        node = api.user("agent", scopes=["node"], project=None)
        assert api.call("POST", "/api/v1/nodes", json=INVENTORY, token=node).status_code == 200
        slow = [Gated(api, noisy), Gated(api, noisy)]
        wait_until(lambda: api.gauge("tessera_api_fairness_inflight", "user") == 2)
        # a third waits in noisy's queue; with the queue full a fourth is refused at once
        third = in_background(lambda: api.call("GET", "/api/v1/jobs", token=noisy))
        wait_until(lambda: api.gauge("tessera_api_fairness_waiting", "user") == 1)
        assert_refused(api.call("GET", "/api/v1/jobs", token=noisy), "queue-full", "'noisy'")
        # others go on meanwhile: another user, and the node agent
        assert api.call("GET", "/api/v1/jobs", token=quiet).status_code == 200
        assert api.call("POST", "/api/v1/nodes/n1/heartbeat", token=node).status_code == 200
        assert api.gauge("tessera_api_fairness_waiting", "user") == 1
        # a seat comes free: the waiting one is admitted
        assert [g.open().status_code for g in slow] == [201, 201]
        assert third().status_code == 200
        assert sample(api, "tessera_api_fairness_requests_total", lane="user", outcome="queued") == 1
        assert sample(api, "tessera_api_fairness_refusals_total", lane="user", limit="queue-full") == 1
        assert api.gauge("tessera_api_fairness_inflight", "user") == 0


def test_a_full_user_lane_leaves_the_system_lane_free(tmp_path: Path) -> None:
    # the lane's two seats are held until the test lets go: bob's wait must run out
    limits = {"api_user_lane_seats": 2, "api_queue_wait": 0.5}
    with served(tmp_path, **limits) as api:
        ann, bob = api.user("ann"), api.user("bob")
        node = api.user("agent", scopes=["node"], project=None)
        assert api.call("POST", "/api/v1/nodes", json=INVENTORY, token=node).status_code == 200
        slow = [Gated(api, ann), Gated(api, ann)]
        wait_until(lambda: api.gauge("tessera_api_fairness_inflight", "user") == 2)
        assert_refused(api.call("GET", "/api/v1/jobs", token=bob), "queue-wait", "the user lane")
        beats = [api.call("POST", "/api/v1/nodes/n1/heartbeat", token=node).status_code for _ in range(5)]
        assert beats == [200] * 5
        assert [g.open().status_code for g in slow] == [201, 201]
        assert api.call("GET", "/api/v1/jobs", token=bob).status_code == 200


def test_watches_do_not_hold_seats_but_are_capped(tmp_path: Path) -> None:
    with served(tmp_path, api_user_concurrency=1, api_streams=1) as api:
        token = api.user("wally")
        headers = {"Authorization": f"Bearer {token}"}
        with api.http.stream("GET", "/api/v1/watch", params={"timeout": 30}, headers=headers) as watch:
            assert watch.status_code == 200
            # the open watch holds no seat: the same user's one seat is free
            assert [api.call("GET", "/api/v1/jobs", token=token).status_code for _ in range(3)] == [200] * 3
            assert api.gauge("tessera_api_fairness_open_streams", "user") == 1
            again = api.call("GET", "/api/v1/watch", params={"timeout": 1}, token=token)
            assert_refused(again, "streams", "'wally'")
        wait_until(lambda: api.gauge("tessera_api_fairness_open_streams", "user") == 0)
        assert api.call("GET", "/api/v1/watch", params={"timeout": 0.1}, token=token).status_code == 200


def test_the_client_waits_out_retry_after_for_idempotent_requests(tmp_path: Path) -> None:
    # a bucket of one: of two requests sent back to back, the second is refused (Retry-After: 1)
    with served(tmp_path, api_user_rate=1, api_user_burst=1) as api:
        refused = {"lane": "user", "limit": "user-rate"}

        def client(name: str, **options: Any) -> Client:
            return Client(ClientConfig(url=api.url, token=api.user(name), source="test"), **options)

        with client("cleo") as cleo:
            assert cleo.list_jobs().items == []
            assert cleo.list_jobs().items == []  # refused once, then sent again after Retry-After
            assert sample(api, "tessera_api_fairness_refusals_total", **refused) == 1
        with client("sid") as sid:
            assert sid.submit_job(job_body("first")).name == "first"
            assert sid.submit_job(job_body("retried")).name == "retried"  # it carries an Idempotency-Key
            assert sample(api, "tessera_api_fairness_refusals_total", **refused) == 2
        with client("pat") as pat:
            with pytest.raises(ApiError) as missing:
                pat.cancel_job("nothing")
            assert missing.value.status == 404
            with pytest.raises(ApiError) as refusal:  # a POST without a key is not sent twice
                pat.cancel_job("nothing")
            assert refusal.value.status == 429 and "user-rate" in refusal.value.problem.detail
            assert sample(api, "tessera_api_fairness_refusals_total", **refused) == 3
        with client("nora", rate_limit_retries=0) as nora:
            nora.list_jobs()
            with pytest.raises(ApiError) as refusal:
                nora.list_jobs()
            assert refusal.value.status == 429
            assert sample(api, "tessera_api_fairness_refusals_total", **refused) == 4

        async def twice(token: str) -> set[str]:
            async with AsyncClient(ClientConfig(url=api.url, token=token, source="test")) as aio:
                await aio.list_jobs()
                page = await aio.list_jobs()
                return {job.name for job in page.items}

        assert asyncio.run(twice(api.user("ada"))) == {"first", "retried"}  # sid's, in their project
        assert sample(api, "tessera_api_fairness_refusals_total", **refused) == 5


# --- the fair queue itself ----------------------------------------------------------------


def test_freed_seats_go_round_robin_across_flows() -> None:
    async def scenario() -> list[str]:
        seats = Seats()
        pool = (seats.pool("lane", 1),)
        assert seats.try_acquire("x", pool)
        order: list[str] = []

        async def request(flow: str, name: str) -> None:
            await seats.acquire(flow, pool, queue_length=10, wait=10)
            order.append(name)
            await asyncio.sleep(0)
            seats.release(pool)

        tasks = []
        for flow, name in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")]:
            tasks.append(asyncio.create_task(request(flow, name)))
            await asyncio.sleep(0)  # queued in this order
        seats.release(pool)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["a1", "b1", "c1", "a2", "a3"]


def test_a_request_needs_every_pool_and_a_full_queue_refuses() -> None:
    async def scenario() -> None:
        seats = Seats()
        lane, user = seats.pool("lane", 5), seats.pool("user 'u'", 1)
        assert seats.try_acquire("u", (lane, user))
        assert not seats.try_acquire("v", (lane, seats.pool("user 'v'", 0)))
        with pytest.raises(Refused) as full:
            await seats.acquire("u", (lane, user), queue_length=0, wait=1)
        assert full.value.limit == "queue-full" and "user 'u'" in full.value.detail
        waiting = asyncio.create_task(seats.acquire("u", (lane, user), queue_length=1, wait=10))
        await asyncio.sleep(0)
        assert seats.waiting("u") == 1 and lane.used == 1
        seats.release((lane, user))
        assert await waiting is True and lane.used == 1 and user.used == 1 and seats.waiting("u") == 0

    asyncio.run(scenario())
