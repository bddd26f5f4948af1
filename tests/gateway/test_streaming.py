"""Bodies stream through the gateway both ways: nothing waits for a whole body."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import GatewayProcess
from tests.gateway.servers import Backends, route, wait_until

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer svc-token"}


def test_response_streams_before_the_replica_finishes(gateway: GatewayProcess, backends: Backends) -> None:
    replica = backends.add("a")
    gateway.apply(route("llm", [(1, 100, [replica.route_replica()])]))
    with gateway.client() as client:
        with client.stream("GET", "/serve/llm/stream", params={"key": "tokens"}, headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["x-tessera-replica"] == str(replica.id)
            chunks = response.iter_raw()
            # the replica waits for "tokens" before its last chunk: this one came through first
            assert next(chunks) == b"first\n"
            assert replica.active == 1
            backends.release("tokens")
            assert b"".join(chunks) == b"last\n"
    wait_until(lambda: replica.active == 0)


@pytest.mark.parametrize("sized", [False, True], ids=["chunked", "content-length"])
def test_upload_streams_to_the_replica(gateway: GatewayProcess, backends: Backends, sized: bool) -> None:
    replica = backends.add("a")
    gateway.apply(route("up", [(1, 100, [replica.route_replica()])]))
    part = b"x" * 20_000

    def body() -> Iterator[bytes]:
        yield part
        # the first part reached the replica while the client still holds the rest
        wait_until(lambda: replica.upload_bytes >= len(part), what="the first part at the replica")
        yield part
        yield part

    headers = {**AUTH, **({"Content-Length": str(3 * len(part))} if sized else {})}
    with gateway.client() as client:
        response = client.post("/serve/up/upload", content=body(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 3 * len(part)
    forwarded = replica.requests[-1]["headers"]
    if sized:
        assert forwarded["content-length"] == str(3 * len(part))
    else:
        assert forwarded.get("transfer-encoding") == "chunked"


def test_large_bodies_pass_intact(gateway: GatewayProcess, backends: Backends) -> None:
    replica = backends.add("a")
    gateway.apply(route("big", [(1, 100, [replica.route_replica()])]))
    payload = bytes(range(256)) * 8192  # 2 MiB
    with gateway.client() as client:
        response = client.put("/serve/big/echo", content=payload, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
