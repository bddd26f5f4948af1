"""The gateway's pieces on their own: split, replica choice, route table carry-over, accounting."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import uuid
from typing import Any

import pytest

from tessera.api.serving import LATENCY_SAMPLES_MAX, Route, RouteReplica, RouteTable
from tessera.gateway import metrics as metrics_module
from tessera.gateway.body import Body
from tessera.gateway.metrics import Metrics, code_class
from tessera.gateway.routes import RevisionState, Router, WeightedSplit
from tests.gateway.servers import route

pytestmark = pytest.mark.timeout(30)


def test_weighted_split_is_exact_and_interleaved() -> None:
    split = WeightedSplit({1: 80, 2: 20, 3: 0})
    picks = [split.next() for _ in range(1000)]
    assert collections.Counter(picks) == {1: 800, 2: 200}
    assert all(collections.Counter(picks[i : i + 10])[2] == 2 for i in range(0, 1000, 10))
    thirds = WeightedSplit({4: 33, 5: 33, 6: 34})
    assert collections.Counter(thirds.next() for _ in range(100)) == {4: 33, 5: 33, 6: 34}
    assert WeightedSplit({1: 0}).next() is None


def _revision(*in_flight: int, ready: bool = True) -> RevisionState:
    router = Router(Metrics())
    replicas = [RouteReplica(id=uuid.uuid4(), endpoint=f"h:{i}") for i in range(len(in_flight))]
    router.apply(_table(route("svc", [(1, 100, replicas)])))
    rev = router.routes["svc"].revisions[1]
    for replica, count in zip(rev.replicas, in_flight, strict=True):
        replica.in_flight = count
        replica.ready = ready
    return rev


def _table(*routes: Route) -> RouteTable:
    return RouteTable(revision=7, services=list(routes))


def test_pick_fewest_in_flight_skipping_unroutable() -> None:
    rev = _revision(3, 1, 2)
    assert rev.pick() is rev.replicas[1]
    rev.replicas[1].draining = True
    assert rev.pick() is rev.replicas[2]
    rev.replicas[2].ready = False
    assert rev.pick() is rev.replicas[0]
    rev.replicas[0].ready = False
    assert rev.pick() is None
    assert _revision(0, 0, ready=False).pick() is None


def test_pick_round_robins_ties() -> None:
    rev = _revision(0, 0, 0)
    picks = collections.Counter(getattr(rev.pick(), "id", None) for _ in range(30))
    assert picks == {r.id: 10 for r in rev.replicas}


def test_route_table_carry_over() -> None:
    router = Router(Metrics())
    a, b = RouteReplica(id=uuid.uuid4(), endpoint="h:1"), RouteReplica(id=uuid.uuid4(), endpoint="h:2")
    router.apply(_table(route("svc", [(1, 100, [a, b])])))
    state = router.routes["svc"]
    rev = state.revisions[1]
    router.replicas[a.id].ready = router.replicas[b.id].ready = True
    moved = RouteReplica(id=b.id, endpoint="h:3")
    router.apply(
        _table(route("svc", [(1, 50, [a.model_copy(update={"draining": True}), moved]), (2, 50, [])]))
    )
    assert router.routes["svc"].revisions[1] is rev  # held requests keep waiting on the same object
    assert router.replicas[a.id].ready and router.replicas[a.id].draining
    assert not router.replicas[b.id].ready  # a new endpoint is probed again
    assert router.keys() == {(rev.service_id, 1), (rev.service_id, 2)}
    router.apply(_table())
    assert rev.removed and router.routes == {} and router.replicas == {}
    assert router.revision == 7 and router.synced


def test_authorization() -> None:
    router = Router(Metrics())
    router.apply(
        _table(route("private", [(1, 100, [])], token="tok"), route("open", [(1, 100, [])], public=True))
    )
    private, public = router.routes["private"], router.routes["open"]
    assert private.authorized("Bearer tok") and private.authorized("bearer  tok")
    assert not private.authorized("Bearer nope")
    assert (
        not private.authorized(None) and not private.authorized("tok") and not private.authorized("Basic tok")
    )
    assert public.authorized(None)
    assert hashlib.sha256(b"tok").hexdigest() == private.route.token_sha256


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_weighted_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(metrics_module.time, "monotonic", clock)
    metrics = Metrics()
    sid = uuid.uuid4()
    stats = metrics.revision(sid, "svc", 1)
    stats.enter()  # in flight the whole window
    clock.now += 0.5
    stats.enter()  # half the window
    stats.hold(1)
    clock.now += 0.25
    stats.hold(-1)
    stats.leave(200, 0.25)
    clock.now += 0.25
    [sample] = metrics.snapshot(1.0, {(sid, 1)}, clock.now)
    assert sample.concurrency == pytest.approx(1.25)
    assert (sample.requests, sample.errors, sample.held) == (1, 0, 0)
    assert sample.latencies_ms == [pytest.approx(250.0)]
    clock.now += 1.0
    stats.leave(502, 1.5)
    [sample] = metrics.snapshot(1.0, {(sid, 1)}, clock.now)
    assert sample.concurrency == pytest.approx(1.0) and (sample.requests, sample.errors) == (1, 1)
    stats.enter()
    clock.now += 0.5
    stats.leave(200, 0.5)
    [sample] = metrics.snapshot(1.0, set(), clock.now)  # out of the table, but it had traffic
    assert sample.requests == 1 and sample.concurrency == pytest.approx(0.5)
    assert metrics.snapshot(1.0, set(), clock.now) == []  # then forgotten


def test_latency_reservoir_is_capped() -> None:
    metrics = Metrics()
    sid = uuid.uuid4()
    stats = metrics.revision(sid, "svc", 1)
    for i in range(5000):
        stats.enter()
        stats.leave(200, i / 1000)
    [sample] = metrics.snapshot(1.0, {(sid, 1)})
    assert sample.requests == 5000 and len(sample.latencies_ms) == LATENCY_SAMPLES_MAX
    assert max(sample.latencies_ms) > 1000  # later requests are sampled too
    assert code_class(204) == "2xx" and code_class(503) == "5xx"


def test_body_replay_rules() -> None:
    async def scenario() -> None:
        messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": b"a", "more_body": True},
            {"type": "http.request", "body": b"b", "more_body": False},
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        whole = Body(receive, b"all", False)
        assert whole.complete and not whole.replayable and whole.payload() == b"all"
        assert Body.EMPTY.replayable and Body.EMPTY.payload() is None
        streamed = await Body.read(receive)
        assert not streamed.complete and streamed.replayable
        stream = streamed.payload()
        assert not isinstance(stream, bytes | None)
        assert [chunk async for chunk in stream] == [b"a", b"b"]
        assert streamed.complete and not streamed.replayable

    asyncio.run(scenario())
