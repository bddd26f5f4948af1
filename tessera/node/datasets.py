"""The node agent's dataset side: run the loads it is given into its cache, and report the cache.

Loads run in their own threads (several files at once each), report progress at
most twice a second, and end Succeeded or Failed with the reason (a source that
cannot be read, no room, files that failed). What the cache holds of each
dataset, and how reads went, is reported every few seconds (the control plane
writes what changed, and names datasets deleted since, which are dropped).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import httpx

from tessera.api.datasets import CacheReport, LoadReport, LoadState, LoadWork
from tessera.datacache.blocks import BlockCache
from tessera.datacache.cache import CacheFull, NodeCache
from tessera.datacache.fetch import SourceFetcher
from tessera.datacache.peers import PeerFetcher
from tessera.datacache.source import FileEntry, Source, SourceError

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5
STREAM_INFO_TTL_S = 60.0
CACHES_EVERY_S = 3.0


def memory_tier_root(node: str) -> Path | None:
    """Where this node keeps memory-tier files: a tmpfs (/dev/shm) when there is one to write to."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    return shm / f"tessera-cache-{node}"


def memory_quota(work: LoadWork) -> int:
    """Bytes of the dataset its memory tier may keep on this node (0: no memory tier)."""
    tiers = [t for t in work.spec.cache.tiers if t.medium.value == "memory"]
    return tiers[0].quota * 1024 * 1024 if tiers else 0


def dataset_limits(work: LoadWork) -> tuple[int, float, float] | None:
    """The dataset's own capacity on a node and its watermarks, if it sets a capacity."""
    policy = work.spec.cache
    capacity = policy.capacity_mib
    if capacity is None:
        return None
    return capacity * 1024 * 1024, policy.high_watermark, policy.low_watermark


class DataManager:
    def __init__(
        self,
        http: httpx.Client,
        node: str,
        root: Path,
        capacity_bytes: int | None = None,
        workers: int = 8,
        memory_tier: bool = True,
    ) -> None:
        self.http, self.node, self.workers = http, node, workers
        # off where tasks read the cache through a hostPath mount (Kubernetes): the memory tier's
        # links point into this process's /dev/shm, which a pod's container does not share
        memory_root = memory_tier_root(node) if memory_tier else None
        self.cache = NodeCache(root, capacity_bytes, memory_root=memory_root)
        self.blocks = BlockCache(self.cache)
        self._streams: dict[str, tuple[float, dict[str, FileEntry], PeerFetcher]] = {}
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        self._stop = stop
        last_caches = 0.0
        while not stop.is_set():
            try:
                self.poll()
                if time.monotonic() - last_caches >= CACHES_EVERY_S:
                    self.report_caches()
                    last_caches = time.monotonic()
            except httpx.HTTPError as exc:
                log.info("dataset loads: control plane unreachable (%s)", exc)
            except Exception:  # keep serving loads whatever one pass hit
                log.exception("dataset pass failed")
            stop.wait(every)
        self.cache.close()

    def poll(self) -> None:
        r = self.http.get(f"/api/v1/nodes/{self.node}/loads")
        r.raise_for_status()
        for item in r.json():
            work = LoadWork.model_validate(item)
            with self._lock:
                alive = self._running.get(work.load_id)
                if alive is not None and alive.is_alive():
                    continue
                thread = threading.Thread(
                    target=self._load, args=(work,), name=f"load-{work.dataset}", daemon=True
                )
                self._running[work.load_id] = thread
            thread.start()

    def _report(self, work: LoadWork, report: LoadReport) -> None:
        try:
            self.http.post(
                f"/api/v1/nodes/{self.node}/loads/{work.load_id}", json=report.model_dump(mode="json")
            ).raise_for_status()
        except httpx.HTTPError as exc:
            log.info("could not report load %s progress: %s", work.load_id, exc)

    def _load(self, work: LoadWork) -> None:
        files = [FileEntry(*f) for f in work.files]
        total = sum(f.size for f in files)
        last = [0.0]

        def report(state: LoadState, done: int, count: int, message: str = "") -> None:
            self._report(
                work,
                LoadReport(
                    bytes_done=done,
                    bytes_total=total,
                    files_done=count,
                    files_total=len(files),
                    state=state,
                    message=message,
                ),
            )

        def progress(done: int, count: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                report(LoadState.RUNNING, done, count)

        log.info("loading dataset %s (%d files, %d bytes)", work.dataset, len(files), total)
        try:
            # peers that hold the dataset first, then the source
            fetcher = PeerFetcher(work.peers, SourceFetcher(Source(work.spec, work.secrets)))
            try:
                result = self.cache.materialize(
                    work.dataset_id,
                    files,
                    fetcher,
                    workers=self.workers,
                    progress=progress,
                    stop=self._stop,
                    memory_quota_bytes=memory_quota(work),
                    limits=dataset_limits(work),
                )
            finally:
                fetcher.close()
        except (SourceError, CacheFull) as exc:
            report(LoadState.FAILED, 0, 0, str(exc))
            return
        except Exception as exc:
            log.exception("load of %s failed", work.dataset)
            report(LoadState.FAILED, 0, 0, f"{type(exc).__name__}: {exc}"[:500])
            return
        stats = self.cache.stats(work.dataset_id)
        if result.errors:
            message = f"{len(result.errors)} file(s) could not be copied; first: {result.errors[0]}"
            report(LoadState.FAILED, stats.cached_bytes, stats.cached_files, message)
        elif self._stop.is_set():
            report(LoadState.FAILED, stats.cached_bytes, stats.cached_files, "the node agent stopped")
        else:
            note = f"{result.fetched} copied, {result.already} already cached"
            report(LoadState.SUCCEEDED, total, len(files), note)
        self.report_caches()

    def ensure(self, dataset_id: str, name: str) -> Path:
        """Cache a dataset a task mounts, now (the task starts once it is all here); its copy's path."""
        r = self.http.get(f"/api/v1/nodes/{self.node}/datasets/{dataset_id}")
        if r.status_code == 404:
            raise RuntimeError(f"dataset {name!r}: {r.json().get('detail', 'not found')}")
        r.raise_for_status()
        work = LoadWork.model_validate(r.json())
        files = [FileEntry(*f) for f in work.files]
        fetcher = PeerFetcher(work.peers, SourceFetcher(Source(work.spec, work.secrets)))
        try:
            result = self.cache.materialize(
                dataset_id,
                files,
                fetcher,
                workers=self.workers,
                memory_quota_bytes=memory_quota(work),
                limits=dataset_limits(work),
            )
        except (SourceError, CacheFull) as exc:
            raise RuntimeError(f"dataset {name!r} could not be cached here: {exc}") from None
        finally:
            fetcher.close()
        if result.already:  # a task about to read files this node already had: local hits
            self.cache.record_read(dataset_id, "local", result.already)
        if result.errors:
            raise RuntimeError(f"dataset {name!r}: {len(result.errors)} file(s) failed: {result.errors[0]}")
        try:
            self.report_caches()
        except httpx.HTTPError:
            pass  # reported on the next pass
        return self.cache.dataset_dir(dataset_id)

    def read_through(self, dataset_id: str, path: str, offset: int, length: int) -> tuple[bytes, int]:
        """Stream mode: bytes of one file through the block cache, and the file's size."""
        entries, fetcher = self._streamed(dataset_id)
        entry = entries.get(path)
        if entry is None:
            raise FileNotFoundError(f"{path} is not a file of this dataset")
        return self.blocks.read(dataset_id, entry, offset, length, fetcher), entry.size

    def _streamed(self, dataset_id: str) -> tuple[dict[str, FileEntry], PeerFetcher]:
        """A streamed dataset's files and fetcher, asked of the control plane once a minute."""
        with self._lock:
            known = self._streams.get(dataset_id)
            if known is not None and time.monotonic() - known[0] < STREAM_INFO_TTL_S:
                return known[1], known[2]
        r = self.http.get(f"/api/v1/nodes/{self.node}/datasets/{dataset_id}")
        if r.status_code == 404:
            raise FileNotFoundError(r.json().get("detail", "no such dataset"))
        r.raise_for_status()
        work = LoadWork.model_validate(r.json())
        entries = {f[0]: FileEntry(*f) for f in work.files}
        fetcher = PeerFetcher(work.peers, SourceFetcher(Source(work.spec, work.secrets)))
        with self._lock:
            old = self._streams.get(dataset_id)
            self._streams[dataset_id] = (time.monotonic(), entries, fetcher)
        if old is not None:
            old[2].close()
        return entries, fetcher

    def report_caches(self) -> None:
        reports = []
        for dataset in self.cache.datasets():
            s = self.cache.stats(dataset)
            report = CacheReport(
                dataset_id=dataset,
                cached_bytes=s.cached_bytes,
                cached_files=s.cached_files,
                local_hits=s.local_hits,
                peer_hits=s.peer_hits,
                source_reads=s.source_reads,
            )
            reports.append(report)  # every one, every time: the answer names the deleted ones
        if not reports:
            return
        body = {"caches": [r.model_dump(mode="json") for r in reports]}
        r = self.http.post(f"/api/v1/nodes/{self.node}/caches", json=body)
        r.raise_for_status()
        gone = set(r.json().get("gone", []))
        for dataset in gone:  # deleted: its files go now, not when eviction reaches them
            log.info("dataset %s was deleted; dropping it from this node's cache", dataset)
            self.cache.drop(dataset)
