"""Stream mode: a file is read through a block cache instead of being copied whole before start.

A read of ``[offset, offset + length)`` fetches only the 4 MiB blocks it touches that
the node does not have (from a peer or the source, ranges), writes them into a sparse
copy of the file and records them; later reads of those blocks, by any task on the
node, are local. Once every block of a file is there, the copy becomes the cache's
complete file (the same one a mount-mode load would have made).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from tessera.datacache.cache import Fetcher, NodeCache
from tessera.datacache.source import FileEntry

BLOCK = 4 * 1024 * 1024


class BlockCache:
    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache
        self.root = cache.root / "blocks"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "blocks.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blocks (dataset TEXT, path TEXT, etag TEXT, block INTEGER,"
            " PRIMARY KEY (dataset, path, block))"
        )

    def _sparse(self, dataset: str, path: str) -> Path:
        target = self.cache.path(dataset, path)  # checks the path stays inside the dataset
        return self.root / dataset / (str(target.relative_to(self.cache.dataset_dir(dataset))) + ".blocks")

    def _present(self, dataset: str, entry: FileEntry) -> set[int]:
        rows = self._db.execute(
            "SELECT block FROM blocks WHERE dataset=? AND path=? AND etag=?",
            (dataset, entry.path, entry.etag),
        ).fetchall()
        return {int(r[0]) for r in rows}

    def read(self, dataset: str, entry: FileEntry, offset: int, length: int, fetcher: Fetcher) -> bytes:
        """The bytes asked for (fewer at the end of the file), fetching missing blocks first."""
        if offset >= entry.size or length <= 0:
            return b""
        end = min(entry.size, offset + length)
        whole = self.cache.lookup(dataset, entry.path, entry.etag)
        if whole is not None:
            with whole.open("rb") as f:
                f.seek(offset)
                return f.read(end - offset)
        sparse = self._sparse(dataset, entry.path)
        with self._lock:
            present = self._present(dataset, entry)
            if not present:  # another version's blocks are of no use
                self._db.execute("DELETE FROM blocks WHERE dataset=? AND path=?", (dataset, entry.path))
                sparse.unlink(missing_ok=True)
            sparse.parent.mkdir(parents=True, exist_ok=True)
            if not sparse.exists():
                with sparse.open("wb") as f:
                    f.truncate(entry.size)
            for block in range(offset // BLOCK, (end - 1) // BLOCK + 1):
                if block in present:
                    continue
                start = block * BLOCK
                want = min(BLOCK, entry.size - start)
                handle, origin = fetcher.open(dataset, entry, start)
                with handle:
                    data = b""
                    while len(data) < want and (chunk := handle.read(want - len(data))):
                        data += chunk
                if len(data) != want:
                    raise OSError(
                        f"{entry.path}: block {block} came back short ({len(data)} of {want} bytes)"
                    )
                with sparse.open("r+b") as f:
                    f.seek(start)
                    f.write(data)
                self._db.execute(
                    "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)",
                    (dataset, entry.path, entry.etag, block),
                )
                present.add(block)
                self.cache.record_read(dataset, origin)
            with sparse.open("rb") as f:
                f.seek(offset)
                data = f.read(end - offset)
            if len(present) == (entry.size + BLOCK - 1) // BLOCK:
                self._complete(dataset, entry, sparse)
        return data

    def _complete(self, dataset: str, entry: FileEntry, sparse: Path) -> None:
        """Every block is here: the sparse copy becomes the cache's file."""
        target = self.cache.path(dataset, entry.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(sparse, target)
        self.cache.adopt(dataset, entry)
        self._db.execute("DELETE FROM blocks WHERE dataset=? AND path=?", (dataset, entry.path))

    def close(self) -> None:
        self._db.close()
