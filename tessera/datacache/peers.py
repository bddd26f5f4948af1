"""Reading a file from a peer node's cache before the source (the point of a distributed cache).

A node agent serves its complete cached files at ``GET /cache/<dataset>/<path>``
(``Range: bytes=N-`` to resume) to callers presenting its *peer token*: an HMAC
of the agent's secret that grants cache reads and nothing else. The control
plane, which knows every agent's secret, hands a loading node the URLs and
tokens of the peers that hold the dataset.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from tessera.api.datasets import PeerCache
from tessera.datacache.cache import NodeCache
from tessera.datacache.source import FileEntry

log = logging.getLogger(__name__)
PEER_HEADER = "X-Tessera-Peer"
CHUNK = 1024 * 1024


def peer_token(agent_secret: str) -> str:
    return hmac.new(agent_secret.encode(), b"tessera-cache-read", hashlib.sha256).hexdigest()


def add_cache_routes(app: FastAPI, cache: Callable[[], NodeCache | None], secret: Callable[[], str]) -> None:
    """Serve this node's complete cached files to peers (read-only, peer token required)."""

    @app.get("/cache/{dataset}/{path:path}")
    def cached_file(
        dataset: str,
        path: str,
        x_tessera_peer: Annotated[str, Header()] = "",
        range_: Annotated[str, Header(alias="Range")] = "",
        etag: Annotated[str | None, Query()] = None,
    ) -> StreamingResponse:
        if not hmac.compare_digest(x_tessera_peer.encode(), peer_token(secret()).encode()):
            raise HTTPException(401, "bad peer token")
        node_cache = cache()
        if node_cache is None:
            raise HTTPException(404, "this node has no dataset cache")
        try:
            found = node_cache.lookup(dataset, path, etag, count=False)
        except ValueError:
            raise HTTPException(404, "no such file") from None
        if found is None:
            raise HTTPException(404, "not cached here (or another version)")
        offset = 0
        if range_.startswith("bytes=") and range_.endswith("-"):
            try:
                offset = int(range_[6:-1])
            except ValueError:
                raise HTTPException(416, "only 'bytes=N-' ranges are served") from None
        return StreamingResponse(
            _read(found, offset), status_code=206 if offset else 200, media_type="application/octet-stream"
        )


def _read(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            yield chunk


class _Stream:
    """A streamed HTTP body as a file object with read(n)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_bytes(CHUNK)
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        if n < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class PeerFetcher:
    """Peers holding the dataset first (in the order given), then ``fallback`` (the source)."""

    def __init__(self, peers: list[PeerCache], fallback: Any, timeout: float = 10.0) -> None:
        self.peers, self.fallback = list(peers), fallback
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, read=60.0))

    def open(self, dataset: str, entry: FileEntry, offset: int) -> tuple[IO[bytes], str]:
        for peer in self.peers:
            url = f"{peer.url.rstrip('/')}/cache/{dataset}/{quote(entry.path)}"
            headers = {PEER_HEADER: peer.token}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                request = self.http.build_request("GET", url, headers=headers, params={"etag": entry.etag})
                response = self.http.send(request, stream=True)
            except httpx.HTTPError as exc:
                log.info("peer %s unreachable for %s: %s", peer.node, entry.path, exc)
                continue
            if response.status_code in (200, 206):
                return _Stream(response), "peer"  # type: ignore[return-value]
            response.close()
        return self.fallback.open(dataset, entry, offset)

    def close(self) -> None:
        self.http.close()
