"""Peer reads: a node copies what a peer's cache holds over the peer's HTTP (with its read token)
before it goes to the source."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from tessera.api.datasets import PeerCache
from tessera.datacache.cache import NodeCache
from tessera.datacache.fetch import SourceFetcher
from tessera.datacache.peers import PEER_HEADER, PeerFetcher, add_cache_routes, peer_token
from tests.datacache.test_cache import source_tree

SECRET = "agent-a-secret"


@contextmanager
def serving(cache: NodeCache) -> Iterator[str]:
    app = FastAPI()
    add_cache_routes(app, lambda: cache, lambda: SECRET)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_node_reads_from_its_peer_before_the_source(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 6, 300 * 1024)
    files = source.list()
    a = NodeCache(tmp_path / "a")
    a.materialize("ds", files[:4], SourceFetcher(source))  # the peer holds 4 of the 6 files
    with serving(a) as url:
        peer = PeerCache(node="a", url=url, token=peer_token(SECRET))
        b = NodeCache(tmp_path / "b")
        result = b.materialize("ds", files, PeerFetcher([peer], SourceFetcher(source)), workers=3)
        assert result.errors == [] and result.from_peers == 4 and result.fetched == 6
        stats = b.stats("ds")
        assert stats.peer_hits == 4 and stats.source_reads == 2 and stats.cached_files == 6
        assert all(
            b.path("ds", f.path).read_bytes() == (tmp_path / "src" / f.path).read_bytes() for f in files
        )
        assert a.stats("ds").local_hits == 0  # serving a peer is not a local hit

        # the source gone: a third node still gets the files the peer holds, from the peer
        shutil.rmtree(tmp_path / "src")
        c = NodeCache(tmp_path / "c")
        got = c.materialize("ds", files[:4], PeerFetcher([peer], SourceFetcher(source)))
        assert got.errors == [] and c.stats("ds").peer_hits == 4


def test_the_peer_token_is_required_and_ranges_resume(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 1, 2 * 1024 * 1024)
    a = NodeCache(tmp_path / "a")
    a.materialize("ds", source.list(), SourceFetcher(source))
    with serving(a) as url:
        target = f"{url}/cache/ds/f000.bin"
        assert httpx.get(target).status_code == 401
        assert httpx.get(target, headers={PEER_HEADER: peer_token("another-agent")}).status_code == 401
        good = {PEER_HEADER: peer_token(SECRET)}
        assert httpx.get(f"{url}/cache/ds/../../index.db", headers=good).status_code == 404
        assert httpx.get(target, headers=good, params={"etag": "old-version"}).status_code == 404
        part = httpx.get(target, headers={**good, "Range": "bytes=2000000-"})
        assert part.status_code == 206 and len(part.content) == 2 * 1024 * 1024 - 2000000
        # a wrong token falls back to the source, and the copy is still right
        wrong = PeerCache(node="a", url=url, token="nope")
        b = NodeCache(tmp_path / "b")
        b.materialize("ds", source.list(), PeerFetcher([wrong], SourceFetcher(source)))
        assert b.stats("ds").peer_hits == 0 and b.stats("ds").source_reads == 1
