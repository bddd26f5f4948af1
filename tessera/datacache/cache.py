"""A node's dataset cache: files materialised under one directory, an index, LRU eviction.

Layout: ``<root>/data/<dataset>/<path>`` for the files, ``<root>/index.db``
(SQLite) for what is there: each file's size and the source's etag when it was
copied, whether it is complete, and when it was last read. A file is copied to
``<path>.part`` and renamed once its size is right, so a file that is in the
index as complete is whole. A copy cut short resumes from the ``.part`` file's
size when the source's etag has not changed since (range reads), and starts over
otherwise.

Eviction keeps the cache between watermarks: once usage passes ``high`` x
capacity, the least recently read files are removed until it is under
``low`` x capacity. Files of pinned datasets (mounted by a running task) are
never evicted; if the room cannot be found without them, the load fails with
``CacheFull`` rather than take them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tessera.datacache.source import FileEntry

CHUNK = 1024 * 1024


class CacheFull(Exception):
    """There is no room for the data without evicting what must stay; the message says how much."""


class Fetcher(Protocol):
    """Copies one file of a dataset (from a peer's cache or the source), from ``offset`` on."""

    def open(self, dataset: str, entry: FileEntry, offset: int) -> tuple[IO[bytes], str]:
        """The file's bytes from ``offset`` and where they come from ("peer" or "source")."""
        ...


@dataclass
class LoadResult:
    files: int = 0
    bytes: int = 0
    already: int = 0  # files that were cached (same size and etag)
    fetched: int = 0
    from_peers: int = 0
    resumed: int = 0
    evicted_bytes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CachedDataset:
    dataset: str
    cached_bytes: int
    cached_files: int
    local_hits: int
    peer_hits: int
    source_reads: int


class NodeCache:
    """One node's cache; safe to use from several threads."""

    def __init__(
        self,
        root: Path,
        capacity_bytes: int | None = None,
        high: float = 0.95,
        low: float = 0.7,
        memory_root: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        # the memory tier: files kept in RAM (a tmpfs such as /dev/shm), linked from the disk tree
        self.memory_root = Path(memory_root) if memory_root is not None else None
        self.capacity = capacity_bytes
        self.high, self.low = high, low
        self._lock = threading.RLock()
        self._pins: set[str] = set()
        self._db = sqlite3.connect(self.root / "index.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (dataset TEXT, path TEXT, size INTEGER, etag TEXT,"
            " complete INTEGER, last_access REAL, PRIMARY KEY (dataset, path))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS stats (dataset TEXT PRIMARY KEY, local_hits INTEGER DEFAULT 0,"
            " peer_hits INTEGER DEFAULT 0, source_reads INTEGER DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        if "tier" not in columns:
            self._db.execute("ALTER TABLE files ADD COLUMN tier TEXT NOT NULL DEFAULT 'disk'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # where things are ------------------------------------------------------------------------

    def path(self, dataset: str, path: str) -> Path:
        """Where the file is in the dataset's tree (a link to the memory tier for files kept there)."""
        base = os.path.normpath(self.data / dataset)
        target = os.path.normpath(os.path.join(base, path))
        if not target.startswith(base + os.sep):
            raise ValueError(f"{path!r} is outside the dataset")
        return Path(target)

    def _in_memory(self, dataset: str, path: str) -> Path:
        assert self.memory_root is not None
        return Path(os.path.normpath(self.memory_root / dataset / path))

    def _remove(self, target: Path) -> None:
        """A cached file, and its memory-tier copy if the tree links to one."""
        if target.is_symlink():
            Path(os.readlink(target)).unlink(missing_ok=True)
        target.unlink(missing_ok=True)

    def memory_bytes(self, dataset: str) -> int:
        with self._lock:
            (used,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE dataset=? AND tier='memory'", (dataset,)
            ).fetchone()
        return int(used)

    def dataset_dir(self, dataset: str) -> Path:
        return self.data / dataset

    def set_pins(self, datasets: Iterable[str]) -> None:
        """The datasets running tasks have mounted: never evicted while pinned."""
        with self._lock:
            self._pins = set(datasets)

    # reading ---------------------------------------------------------------------------------

    def lookup(self, dataset: str, path: str, etag: str | None = None, count: bool = True) -> Path | None:
        """The cached file if it is complete (and of that etag); its age is reset and (``count``) a
        local hit counted (a peer's read is counted by the peer)."""
        with self._lock:
            row = self._db.execute(
                "SELECT etag FROM files WHERE dataset=? AND path=? AND complete=1", (dataset, path)
            ).fetchone()
            if row is None or (etag is not None and row[0] != etag):
                return None
            self._db.execute(
                "UPDATE files SET last_access=? WHERE dataset=? AND path=?", (time.time(), dataset, path)
            )
            if count:
                self._count(dataset, "local_hits")
        return self.path(dataset, path)

    def _count(self, dataset: str, column: str, by: int = 1) -> None:
        assert column in ("local_hits", "peer_hits", "source_reads")
        self._db.execute("INSERT OR IGNORE INTO stats (dataset) VALUES (?)", (dataset,))
        self._db.execute(f"UPDATE stats SET {column} = {column} + ? WHERE dataset=?", (by, dataset))

    def adopt(self, dataset: str, entry: FileEntry) -> None:
        """A complete file put in place by someone else (the block cache) joins the index."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files (dataset, path, size, etag, complete, last_access)"
                " VALUES (?, ?, ?, ?, 1, ?)",
                (dataset, entry.path, entry.size, entry.etag, time.time()),
            )

    def record_read(self, dataset: str, origin: str, count: int = 1) -> None:
        """Reads served locally, from a peer or from the source (``origin``: local, peer, source)."""
        column = {"local": "local_hits", "peer": "peer_hits"}.get(origin, "source_reads")
        with self._lock:
            self._count(dataset, column, count)

    # usage -----------------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes the cache holds (complete files and partial copies)."""
        with self._lock:
            (complete,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE complete=1"
            ).fetchone()
        partial = sum(p.stat().st_size for p in self.data.rglob("*.part") if p.is_file())
        return int(complete) + partial

    def stats(self, dataset: str) -> CachedDataset:
        with self._lock:
            size, count = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM files WHERE dataset=? AND complete=1",
                (dataset,),
            ).fetchone()
            hits = self._db.execute(
                "SELECT local_hits, peer_hits, source_reads FROM stats WHERE dataset=?", (dataset,)
            ).fetchone() or (0, 0, 0)
        return CachedDataset(dataset, int(size), int(count), *map(int, hits))

    def datasets(self) -> list[str]:
        """Every dataset the cache holds files of or has counted reads for."""
        with self._lock:
            rows = self._db.execute(
                "SELECT dataset FROM files UNION SELECT dataset FROM stats ORDER BY dataset"
            ).fetchall()
        return [r[0] for r in rows]

    # eviction --------------------------------------------------------------------------------

    def evict(self, needed: int = 0, keep: Iterable[str] = ()) -> int:
        """Make room for ``needed`` more bytes within the watermarks; returns the bytes freed.

        Evicts only when usage plus ``needed`` passes the high watermark, then down to the low
        one, least recently read first, never a pinned dataset's files nor ``keep``'s.
        """
        if self.capacity is None:
            return 0
        with self._lock:
            usage = self.usage()
            if usage + needed <= self.high * self.capacity:
                return 0
            target = max(0.0, self.low * self.capacity - needed)
            protected = self._pins | set(keep)
            freed = 0
            rows = self._db.execute(
                "SELECT dataset, path, size FROM files WHERE complete=1 ORDER BY last_access, dataset, path"
            ).fetchall()
            for dataset, path, size in rows:
                if usage - freed <= target:
                    break
                if dataset in protected:
                    continue
                self._remove(self.path(dataset, path))
                self._db.execute("DELETE FROM files WHERE dataset=? AND path=?", (dataset, path))
                freed += int(size)
            return freed

    def trim(self, dataset: str, keep: set[str], capacity: int, high: float, low: float, needed: int) -> int:
        """The dataset's own watermarks: past ``high`` x its capacity (with ``needed`` more bytes),
        its files no longer in its listing (``keep``) go, least recently read first, down to
        ``low`` x capacity. Returns the bytes freed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size FROM files WHERE dataset=? AND complete=1 ORDER BY last_access, path",
                (dataset,),
            ).fetchall()
            held = sum(int(size) for _, size in rows)
            if held + needed <= high * capacity:
                return 0
            freed = 0
            for path, size in rows:
                if held - freed + needed <= low * capacity:
                    break
                if path in keep:
                    continue
                self._remove(self.path(dataset, path))
                self._db.execute("DELETE FROM files WHERE dataset=? AND path=?", (dataset, path))
                freed += int(size)
            return freed

    def drop(self, dataset: str) -> None:
        """Forget a dataset entirely (it was deleted)."""
        with self._lock:
            self._db.execute("DELETE FROM files WHERE dataset=?", (dataset,))
            self._db.execute("DELETE FROM stats WHERE dataset=?", (dataset,))
        shutil.rmtree(self.dataset_dir(dataset), ignore_errors=True)
        if self.memory_root is not None:
            shutil.rmtree(self.memory_root / dataset, ignore_errors=True)

    # loading ---------------------------------------------------------------------------------

    def materialize(
        self,
        dataset: str,
        files: list[FileEntry],
        fetcher: Fetcher,
        *,
        workers: int = 8,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
        memory_quota_bytes: int = 0,
        limits: tuple[int, float, float] | None = None,
    ) -> LoadResult:
        """Copy every file not cached yet (or changed at the source); CacheFull if it cannot fit.

        ``progress(bytes_done, files_done)`` is called as files complete (cached ones count at once).
        ``limits``: the dataset's own (capacity bytes, high, low) watermarks on this node.
        """
        result = LoadResult(files=len(files), bytes=sum(f.size for f in files))
        if self.capacity is not None and result.bytes > self.high * self.capacity:
            raise CacheFull(
                f"the dataset ({result.bytes} bytes) is larger than this node's cache "
                f"({self.capacity} bytes at most, {self.high:.0%} of it in use before eviction)"
            )
        with self._lock:
            known = {
                row[0]: (row[1], row[2], row[3])
                for row in self._db.execute(
                    "SELECT path, size, etag, complete FROM files WHERE dataset=?", (dataset,)
                )
            }
        todo = []
        done_bytes = 0
        for entry in files:
            have = known.get(entry.path)
            if (
                have is not None
                and have[2] == 1
                and have == (entry.size, entry.etag, 1)
                and self.path(dataset, entry.path).is_file()
            ):
                result.already += 1
                done_bytes += entry.size
            else:
                todo.append(entry)
        missing = sum(e.size for e in todo)
        if limits is not None:  # the dataset's own capacity and watermarks come first
            result.evicted_bytes += self.trim(dataset, {f.path for f in files}, *limits, needed=missing)
        result.evicted_bytes += self.evict(missing, keep={dataset})
        if self.capacity is not None and self.usage() + missing > self.capacity:
            raise CacheFull(
                f"no room for {missing} more bytes on this node: {self.usage()} of {self.capacity} bytes are "
                f"held, and the rest belongs to datasets that running tasks have mounted"
            )
        lock = threading.Lock()
        counters = {"bytes": done_bytes, "files": result.already}
        if progress is not None:
            progress(counters["bytes"], counters["files"])

        memory = {"left": max(0, memory_quota_bytes - self.memory_bytes(dataset))}

        def one(entry: FileEntry) -> None:
            if stop is not None and stop.is_set():
                return
            tier = "disk"
            with lock:  # the memory tier takes files while its quota lasts, the disk the rest
                if self.memory_root is not None and entry.size <= memory["left"]:
                    memory["left"] -= entry.size
                    tier = "memory"
            origin, resumed = self._copy(dataset, entry, fetcher, known.get(entry.path), tier)
            with lock:
                result.fetched += 1
                result.resumed += int(resumed)
                result.from_peers += int(origin == "peer")
                counters["bytes"] += entry.size
                counters["files"] += 1
                if progress is not None:
                    progress(counters["bytes"], counters["files"])

        with ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix=f"load-{dataset[:8]}"
        ) as pool:
            futures = [pool.submit(one, e) for e in todo]
            for future in futures:
                try:
                    future.result()
                except Exception as exc:  # every file is tried; the load reports what failed
                    result.errors.append(str(exc)[:300])
        return result

    def _copy(
        self,
        dataset: str,
        entry: FileEntry,
        fetcher: Fetcher,
        known: tuple[int, str, int] | None,
        tier: str = "disk",
    ) -> tuple[str, bool]:
        link = self.path(dataset, entry.path)
        target = self._in_memory(dataset, entry.path) if tier == "memory" else link
        part = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        offset = 0
        # a partial copy of the same version of the file resumes where it stopped
        if part.exists() and known is not None and known[1] == entry.etag and known[2] == 0:
            offset = min(part.stat().st_size, entry.size)
        else:
            part.unlink(missing_ok=True)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files (dataset, path, size, etag, complete, last_access)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (dataset, entry.path, entry.size, entry.etag, time.time()),
            )
        origin = "source"
        if offset < entry.size:
            handle, origin = fetcher.open(dataset, entry, offset)
            with handle, part.open("ab" if offset else "wb") as out:
                out.seek(offset)
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
        elif entry.size == 0:
            part.touch()
        size = part.stat().st_size
        if size != entry.size:
            raise OSError(f"{entry.path}: got {size} bytes, expected {entry.size}; it will be fetched again")
        if link != target:  # a memory-tier file: the dataset's tree links to it
            self._remove(link)
            os.replace(part, target)
            os.symlink(target, link)
        else:
            if link.is_symlink():  # it was in the memory tier before
                self._remove(link)
            os.replace(part, target)
        with self._lock:
            self._db.execute(
                "UPDATE files SET complete=1, last_access=?, tier=? WHERE dataset=? AND path=?",
                (time.time(), tier, dataset, entry.path),
            )
            self._count(dataset, "peer_hits" if origin == "peer" else "source_reads")
        return origin, offset > 0
