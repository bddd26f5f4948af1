"""Dataset caching: cold against warm epoch reads through a slow source, peer against source, eviction.

The source is an HTTP file server on loopback behind a throttling TCP proxy (``Throttle``: one
shared token bucket, 100 MB/s by default, and 20 ms added to every request the client sends), so
"remote" behaves like a remote store. Two datasets of the same size (2 GiB by default): many small
files (256 KiB each) and a few large ones (4 files).

- cold epoch: a node loads the dataset into its cache through the proxy (what a first epoch, or a
  job without a cache, reads at), 8 files at a time;
- warm epoch: every file read again from the node's cache (the page cache is not dropped on this
  shared machine, so this is the cache as a running job sees it);
- peer: a second node loads the dataset from the first node's cache over its agent route
  (loopback, not throttled: peers share the cluster network), against the cold source load;
- eviction: a cache of 1.5x one dataset takes both, one after the other; the first is evicted down
  to the low watermark; pinned, it is kept and the second load fails with CacheFull.

Run: ``.venv/bin/python -m bench.datasets [--size-gib 2] [--mbps 100] [--latency-ms 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tessera.api.datasets import DatasetSpec, PeerCache
from tessera.datacache.cache import CacheFull, NodeCache
from tessera.datacache.fetch import SourceFetcher
from tessera.datacache.peers import PeerFetcher, peer_token
from tessera.datacache.source import Source
from tests.datacache.sources import http_server
from tests.datacache.test_peers import SECRET, serving

MIB = 1024 * 1024


class Throttle:
    """A TCP proxy on loopback: a shared bandwidth limit and a delay on every client write."""

    def __init__(self, upstream_port: int, bytes_per_s: float, latency_s: float) -> None:
        self.upstream_port, self.rate, self.latency = upstream_port, bytes_per_s, latency_s
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()

    async def _spend(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.rate * 0.05, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= n or n > self.rate * 0.05:
                self._tokens -= n
                if self._tokens < 0:
                    await asyncio.sleep(-self._tokens / self.rate)
                return
            await asyncio.sleep((n - self._tokens) / self.rate)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, down: bool) -> None:
        try:
            while data := await reader.read(64 * 1024):
                if down:
                    await self._spend(len(data))
                else:
                    await asyncio.sleep(self.latency)  # a request on its way to the store
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))

    async def _main(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    def start(self) -> Throttle:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._main())
            except RuntimeError:
                pass  # stopped

        threading.Thread(target=run, daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass
class Epochs:
    name: str
    files: int
    size: int
    cold_s: float
    warm_s: float
    peer_s: float


def make_files(root: Path, count: int, size: int) -> None:
    root.mkdir(parents=True)
    block = os.urandom(min(size, 4 * MIB))
    for i in range(count):
        with (root / f"{i:05d}.bin").open("wb") as f:
            left = size
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)


def read_all(cache: NodeCache, dataset: str, paths: list[str]) -> None:
    for path in paths:
        found = cache.lookup(dataset, path)
        assert found is not None, path
        with found.open("rb") as f:
            while f.read(4 * MIB):
                pass


def epochs(name: str, root: Path, work: Path, proxy_port: int) -> Epochs:
    spec = DatasetSpec.model_validate({"name": name, "source": f"http://127.0.0.1:{proxy_port}/{name}/"})
    source = Source(spec)
    files = source.list()
    a = NodeCache(work / f"{name}-a")
    start = time.perf_counter()
    result = a.materialize(name, files, SourceFetcher(source), workers=8)
    cold = time.perf_counter() - start
    assert not result.errors, result.errors[:3]
    start = time.perf_counter()
    read_all(a, name, [f.path for f in files])
    warm = time.perf_counter() - start
    with serving(a) as url:
        b = NodeCache(work / f"{name}-b")
        fetcher = PeerFetcher([PeerCache(node="a", url=url, token=peer_token(SECRET))], SourceFetcher(source))
        start = time.perf_counter()
        got = b.materialize(name, files, fetcher, workers=8)
        peer = time.perf_counter() - start
        fetcher.close()
        assert got.from_peers == len(files), got
    return Epochs(name, len(files), sum(f.size for f in files), cold, warm, peer)


def eviction(root: Path, work: Path, size: int) -> list[str]:
    lines = []
    sources = {
        name: Source(DatasetSpec.model_validate({"name": name, "source": f"file://{root / name}"}))
        for name in ("small", "large")
    }
    cache = NodeCache(work / "evict", capacity_bytes=int(size * 1.5), high=0.9, low=0.6)
    cache.materialize("small", sources["small"].list(), SourceFetcher(sources["small"]), workers=8)
    lines.append(f"| after loading small | {cache.usage() / MIB:.0f} | - |")
    result = cache.materialize("large", sources["large"].list(), SourceFetcher(sources["large"]), workers=8)
    kept = cache.stats("small").cached_bytes
    lines.append(
        f"| after loading large | {cache.usage() / MIB:.0f} | {result.evicted_bytes / MIB:.0f} evicted "
        f"from small (small keeps {kept / MIB:.0f}) |"
    )
    cache.set_pins({"large"})
    try:
        cache.materialize("small", sources["small"].list(), SourceFetcher(sources["small"]), workers=8)
        lines.append("| small again, large pinned | ? | loaded (unexpected) |")
    except CacheFull as exc:
        lines.append(
            f"| small again, large pinned | {cache.usage() / MIB:.0f} | CacheFull: {str(exc)[:60]}... |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--mbps", type=float, default=100.0, help="source bandwidth, MB/s")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    size = int(args.size_gib * 1024 * MIB)
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir="/tmp") as tmp:
        root, work = Path(tmp) / "src", Path(tmp) / "work"
        make_files(root / "small", size // (256 * 1024), 256 * 1024)
        make_files(root / "large", 4, size // 4)
        with http_server(root) as url:
            proxy = Throttle(int(url.rsplit(":", 1)[1]), args.mbps * 1e6, args.latency_ms / 1000).start()
            try:
                results = [epochs(name, root, work, proxy.port) for name in ("small", "large")]
            finally:
                proxy.stop()
        lines = eviction(root, work, size)
    print(f"\nSource: HTTP behind a proxy at {args.mbps:.0f} MB/s and {args.latency_ms:.0f} ms per request\n")
    columns = [
        "dataset", "files", "size (MiB)", "cold epoch (s)", "cold MB/s", "warm epoch (s)", "warm MB/s",
        "warm / cold", "peer load (s)", "peer MB/s",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.name} | {r.files} | {r.size / MIB:.0f} | {r.cold_s:.1f} | {r.size / r.cold_s / 1e6:.0f} "
            f"| {r.warm_s:.2f} | {r.size / r.warm_s / 1e6:.0f} | {r.cold_s / r.warm_s:.0f}x "
            f"| {r.peer_s:.1f} | {r.size / r.peer_s / 1e6:.0f} |"
        )
    print(f"\nEviction: cache of {1.5 * size / MIB:.0f} MiB, watermarks 90% / 60%\n")
    print("| step | usage (MiB) | what happened |\n|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
