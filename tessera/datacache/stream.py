"""Stream mode, both ends: the node agent's read-through route, and ``open()`` for tasks.

A task that mounts a dataset in stream mode starts at once; ``TESSERA_DATA_<NAME>``
is the node's (possibly partial) copy, ``TESSERA_DATA_<NAME>_URL`` the agent's route
for it and ``TESSERA_DATA_<NAME>_TOKEN`` a token good for that dataset only.
``tessera.datacache.open(name, path)`` opens the node's complete copy of a file when
it has one, and otherwise reads it through the agent in 4 MiB blocks, which the
agent fetches (peers first, then the source) into its block cache.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import Response

from tessera.datacache.blocks import BLOCK

STREAM_HEADER = "X-Tessera-Stream"
SIZE_HEADER = "X-Tessera-Size"


def stream_token(agent_secret: str, dataset_id: str) -> str:
    return hmac.new(
        agent_secret.encode(), f"tessera-stream:{dataset_id}".encode(), hashlib.sha256
    ).hexdigest()


def add_stream_routes(app: FastAPI, reader: Callable[[], Any], secret: Callable[[], str]) -> None:
    """``GET /stream/<dataset>/<path>`` with ``Range: bytes=a-b``: bytes through the block cache.

    ``reader()`` is the agent's DataManager (``read_through(dataset, path, offset, length)``
    returning ``(bytes, file size)``), or None while it starts.
    """

    @app.get("/stream/{dataset}/{path:path}")
    def stream(
        dataset: str,
        path: str,
        x_tessera_stream: Annotated[str, Header()] = "",
        range_: Annotated[str, Header(alias="Range")] = "",
    ) -> Response:
        if not hmac.compare_digest(x_tessera_stream.encode(), stream_token(secret(), dataset).encode()):
            raise HTTPException(401, "bad stream token for this dataset")
        manager = reader()
        if manager is None:
            raise HTTPException(503, "the node's dataset cache is starting")
        first, last = 0, BLOCK - 1
        if range_:
            try:
                a, _, b = range_.removeprefix("bytes=").partition("-")
                first, last = int(a), int(b) if b else int(a) + BLOCK - 1
            except ValueError:
                raise HTTPException(416, "only 'bytes=a-b' ranges are served") from None
        try:
            data, size = manager.read_through(dataset, path, first, last - first + 1)
        except FileNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise HTTPException(502, f"could not read {path}: {exc}") from None
        headers = {SIZE_HEADER: str(size)}
        if data:
            headers["Content-Range"] = f"bytes {first}-{first + len(data) - 1}/{size}"
        return Response(data, status_code=206, headers=headers, media_type="application/octet-stream")


class _Remote(io.RawIOBase):
    """One file of a streamed dataset, read in ranges through the node agent."""

    def __init__(self, url: str, token: str, path: str) -> None:
        self._url = f"{url.rstrip('/')}/{quote(path)}"
        self._http = httpx.Client(timeout=httpx.Timeout(10.0, read=300.0), headers={STREAM_HEADER: token})
        self._pos = 0
        self._size: int | None = None
        self.name = path

    def _get(self, start: int, length: int) -> bytes:
        r = self._http.get(self._url, headers={"Range": f"bytes={start}-{start + length - 1}"})
        if r.status_code == 404:
            raise FileNotFoundError(r.json().get("detail", self.name))
        r.raise_for_status()
        self._size = int(r.headers[SIZE_HEADER])
        return r.content

    @property
    def size(self) -> int:
        if self._size is None:
            self._get(0, 1)
        assert self._size is not None
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not len(view):
            return 0
        data = self._get(self._pos, min(len(view), BLOCK))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the file, a block per request (not io's 8 KiB at a time)."""
        parts = []
        while self._pos < self.size:
            data = self._get(self._pos, BLOCK)
            if not data:
                break
            parts.append(data)
            self._pos += len(data)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._http.close()
        super().close()


def open(name: str, path: str) -> IO[bytes]:  # noqa: A001 - the helper's name, as documented
    """A file of a dataset the task mounts: the node's complete copy, or read through in blocks."""
    key = "TESSERA_DATA_" + name.upper().replace("-", "_")
    root = os.environ.get(key)
    if root is None:
        raise FileNotFoundError(f"this task does not mount dataset {name!r} ({key} is not set)")
    local = Path(root) / path
    if local.is_file():  # files are renamed into place only once whole
        return local.open("rb")
    url, token = os.environ.get(f"{key}_URL"), os.environ.get(f"{key}_TOKEN")
    if not url or not token:
        raise FileNotFoundError(f"{path} is not in the node's copy of {name!r}, and it is not streamed")
    return io.BufferedReader(_Remote(url, token, path), buffer_size=BLOCK)
