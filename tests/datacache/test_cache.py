"""A node's dataset cache on real files: copies, resumes, etag checks, LRU eviction and pins."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import IO

import pytest

from tessera.api.datasets import DatasetSpec
from tessera.datacache.cache import CacheFull, NodeCache
from tessera.datacache.fetch import SourceFetcher
from tessera.datacache.source import FileEntry, Source
from tests.datacache.sources import S3_KEYS, put_objects, s3_server

KB = 1024


def source_tree(root: Path, count: int, size: int, fill: bytes = b"x") -> Source:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"f{i:03d}.bin").write_bytes(fill * size)
    return Source(DatasetSpec.model_validate({"name": "d", "source": f"file://{root}"}))


class Counting:
    """A fetcher that records what it was asked for (and can fail once)."""

    def __init__(self, inner: SourceFetcher, fail_after: int | None = None) -> None:
        self.inner, self.fail_after = inner, fail_after
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def open(self, dataset: str, entry: FileEntry, offset: int) -> tuple[IO[bytes], str]:
        with self.lock:
            self.calls.append((entry.path, offset))
        handle, origin = self.inner.open(dataset, entry, offset)
        if self.fail_after is not None:
            data = handle.read(self.fail_after)
            handle.close()
            return _Broken(data), origin
        return handle, origin


class _Broken(io.BytesIO):
    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        if not data:
            raise ConnectionResetError("connection lost mid-file")
        return data


def test_copies_concurrently_and_a_second_load_hits(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 20, 10 * KB)
    cache = NodeCache(tmp_path / "cache")
    fetcher = Counting(SourceFetcher(source))
    seen: list[tuple[int, int]] = []
    result = cache.materialize(
        "d1", source.list(), fetcher, workers=4, progress=lambda b, f: seen.append((b, f))
    )
    assert result.fetched == 20 and result.errors == [] and len(fetcher.calls) == 20
    assert seen[-1] == (20 * 10 * KB, 20) and seen == sorted(seen)
    assert cache.stats("d1").cached_bytes == 200 * KB and cache.stats("d1").source_reads == 20
    again = cache.materialize("d1", source.list(), fetcher)
    assert again.already == 20 and again.fetched == 0 and len(fetcher.calls) == 20
    hit = cache.lookup("d1", "f003.bin")
    assert hit is not None and hit.read_bytes() == b"x" * 10 * KB and cache.stats("d1").local_hits == 1


def test_a_changed_file_is_fetched_again(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 3, KB)
    cache = NodeCache(tmp_path / "cache")
    cache.materialize("d", source.list(), SourceFetcher(source))
    (tmp_path / "src" / "f001.bin").write_bytes(b"y" * (2 * KB))
    fetcher = Counting(SourceFetcher(source))
    result = cache.materialize("d", source.list(), fetcher)
    assert [p for p, _ in fetcher.calls] == ["f001.bin"] and result.already == 2
    assert cache.path("d", "f001.bin").read_bytes() == b"y" * 2 * KB


def test_a_copy_cut_short_resumes_from_where_it_stopped(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 1, 3 * 1024 * KB)
    cache = NodeCache(tmp_path / "cache")
    broken = cache.materialize("d", source.list(), Counting(SourceFetcher(source), fail_after=1024 * KB))
    assert broken.fetched == 0 and "connection lost" in broken.errors[0]
    assert cache.lookup("d", "f000.bin") is None  # a partial file is never served
    fetcher = Counting(SourceFetcher(source))
    result = cache.materialize("d", source.list(), fetcher)
    assert result.resumed == 1 and fetcher.calls == [("f000.bin", 1024 * KB)]
    assert cache.path("d", "f000.bin").read_bytes() == b"x" * 3 * 1024 * KB


def test_lru_eviction_between_watermarks_spares_pinned_datasets(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", capacity_bytes=100 * KB, high=0.9, low=0.5)
    sources = {name: source_tree(tmp_path / name, 4, 10 * KB) for name in ("old", "pinned", "new")}
    cache.materialize("old", sources["old"].list(), SourceFetcher(sources["old"]))
    cache.materialize("pinned", sources["pinned"].list(), SourceFetcher(sources["pinned"]))
    cache.set_pins({"pinned"})
    assert cache.usage() == 80 * KB
    # 40 KiB more would pass 90 KiB: evict least recently used, down to 50 - 40 = 10 KiB, pinned kept
    result = cache.materialize("new", sources["new"].list(), SourceFetcher(sources["new"]))
    assert result.evicted_bytes == 40 * KB
    assert cache.stats("old").cached_files == 0 and cache.stats("pinned").cached_files == 4
    assert cache.stats("new").cached_files == 4 and cache.usage() == 80 * KB
    # nothing unpinned is left to evict: a fourth dataset cannot fit, and nothing pinned is taken
    extra = source_tree(tmp_path / "extra", 5, 10 * KB)
    cache.set_pins({"pinned", "new"})
    with pytest.raises(CacheFull, match="running tasks have mounted"):
        cache.materialize("extra", extra.list(), SourceFetcher(extra))
    assert cache.stats("pinned").cached_files == 4 and cache.stats("new").cached_files == 4


def test_a_dataset_larger_than_the_cache_is_refused_before_any_copy(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 5, 30 * KB)
    cache = NodeCache(tmp_path / "cache", capacity_bytes=100 * KB)
    with pytest.raises(CacheFull, match="larger than this node's cache"):
        cache.materialize("d", source.list(), SourceFetcher(source))
    assert cache.usage() == 0


def test_from_an_s3_server(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        put_objects(endpoint, "cache-bucket", {f"set/{i}.bin": bytes([i]) * 5000 for i in range(6)})
        spec = DatasetSpec.model_validate(
            {"name": "d", "source": "s3://cache-bucket/set", "endpoint_url": endpoint}
        )
        source = Source(spec, S3_KEYS)
        cache = NodeCache(tmp_path / "cache")
        result = cache.materialize("d", source.list(), SourceFetcher(source), workers=3)
        assert result.fetched == 6 and result.errors == []
        assert cache.path("d", "4.bin").read_bytes() == bytes([4]) * 5000


def test_paths_cannot_escape_the_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        NodeCache(tmp_path / "c").path("d", "../other/x")


def test_the_memory_tier_takes_files_up_to_its_quota_and_the_disk_the_rest(tmp_path: Path) -> None:
    source = source_tree(tmp_path / "src", 4, 10 * KB)
    shm = tmp_path / "shm"  # stands in for /dev/shm
    cache = NodeCache(tmp_path / "cache", capacity_bytes=100 * KB, high=0.9, low=0.5, memory_root=shm)
    cache.materialize("d", source.list(), SourceFetcher(source), memory_quota_bytes=25 * KB)
    in_memory = sorted(p.name for p in shm.rglob("*.bin"))
    links = [p for p in (tmp_path / "cache" / "data" / "d").iterdir() if p.is_symlink()]
    assert len(in_memory) == 2 and len(links) == 2 and cache.memory_bytes("d") == 20 * KB
    for f in source.list():  # every file reads the same through the dataset's tree
        found = cache.lookup("d", f.path)
        assert found is not None and found.read_bytes() == b"x" * 10 * KB
    assert (
        cache.materialize("d", source.list(), SourceFetcher(source), memory_quota_bytes=25 * KB).already == 4
    )
    # eviction takes the memory copies with their links
    other = source_tree(tmp_path / "other", 6, 10 * KB)
    cache.materialize("other", other.list(), SourceFetcher(other))
    assert cache.stats("d").cached_files == 0 and not list(shm.rglob("*.bin"))
    assert not [p for p in (tmp_path / "cache" / "data").rglob("*") if p.is_symlink()]
    cache.materialize("d", source.list(), SourceFetcher(source), memory_quota_bytes=25 * KB)
    cache.drop("d")
    assert not (shm / "d").exists() and not (tmp_path / "cache" / "data" / "d").exists()


def test_a_datasets_own_watermarks_drop_its_files_no_longer_listed(tmp_path: Path) -> None:
    root = tmp_path / "src"
    source = source_tree(root, 6, 10 * KB)
    cache = NodeCache(tmp_path / "cache")  # no node capacity: only the dataset's own applies
    cache.materialize("d", source.list(), SourceFetcher(source))
    for old in ("f000.bin", "f001.bin", "f002.bin"):  # the source moves on: three files go, three come
        (root / old).unlink()
    for new in ("g000.bin", "g001.bin", "g002.bin"):
        (root / new).write_bytes(b"y" * 10 * KB)
    limits = (80 * KB, 0.9, 0.6)  # 60 KiB held + 30 KiB new passes 72 KiB: trim to 48 - 30 = 18 KiB
    result = cache.materialize("d", source.list(), SourceFetcher(source), limits=limits)
    assert result.evicted_bytes == 30 * KB and result.fetched == 3
    assert cache.lookup("d", "f000.bin") is None and cache.lookup("d", "g000.bin") is not None
    assert cache.stats("d").cached_files == 6  # the listing's six, none of the stale ones
