"""Stream mode's block cache: reads fetch only the blocks they touch, once; a file read in full
becomes the cache's complete copy."""

from __future__ import annotations

from pathlib import Path

from tessera.datacache.blocks import BLOCK, BlockCache
from tessera.datacache.cache import NodeCache
from tessera.datacache.fetch import SourceFetcher
from tests.datacache.test_cache import Counting


def test_reads_fetch_only_missing_blocks_and_complete_the_file(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    body = bytes(range(256)) * (10 * BLOCK // 256 + 1000)  # 10 blocks and a bit
    (root / "big.bin").write_bytes(body)
    from tessera.api.datasets import DatasetSpec
    from tessera.datacache.source import Source

    source = Source(DatasetSpec.model_validate({"name": "d", "source": f"file://{root}"}))
    entry = source.list()[0]
    cache = NodeCache(tmp_path / "cache")
    blocks = BlockCache(cache)
    fetcher = Counting(SourceFetcher(source))
    # a read across a block boundary fetches exactly those two blocks
    got = blocks.read("d", entry, 3 * BLOCK - 10, 20, fetcher)
    assert got == body[3 * BLOCK - 10 : 3 * BLOCK + 10]
    assert sorted(o for _, o in fetcher.calls) == [2 * BLOCK, 3 * BLOCK]
    assert blocks.read("d", entry, 3 * BLOCK - 5, 10, fetcher) == body[3 * BLOCK - 5 : 3 * BLOCK + 5]
    assert len(fetcher.calls) == 2  # cached blocks are not fetched again
    assert cache.lookup("d", "big.bin") is None  # not complete yet
    # read it all: the rest is fetched once, and the file becomes the cache's complete copy
    data = b"".join(blocks.read("d", entry, o, BLOCK, fetcher) for o in range(0, entry.size, BLOCK))
    assert data == body and len(fetcher.calls) == 11
    whole = cache.lookup("d", "big.bin", entry.etag)
    assert whole is not None and whole.read_bytes() == body
    assert blocks.read("d", entry, entry.size - 3, 100, fetcher) == body[-3:] and len(fetcher.calls) == 11
    assert cache.stats("d").source_reads == 11


def test_the_stream_route_wants_the_datasets_own_token() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tessera.datacache.stream import STREAM_HEADER, add_stream_routes, stream_token

    class Manager:
        def read_through(self, dataset: str, path: str, offset: int, length: int) -> tuple[bytes, int]:
            if path != "a.bin":
                raise FileNotFoundError(f"{path} is not a file of this dataset")
            return b"0123456789"[offset : offset + length], 10

    app = FastAPI()
    add_stream_routes(app, Manager, lambda: "agent-secret")
    client = TestClient(app)
    good = {STREAM_HEADER: stream_token("agent-secret", "ds1")}
    r = client.get("/stream/ds1/a.bin", headers={**good, "Range": "bytes=2-5"})
    assert r.status_code == 206 and r.content == b"2345" and r.headers["Content-Range"] == "bytes 2-5/10"
    assert client.get("/stream/ds2/a.bin", headers=good).status_code == 401  # another dataset's token
    assert client.get("/stream/ds1/a.bin").status_code == 401
    assert client.get("/stream/ds1/nope.bin", headers=good).status_code == 404
