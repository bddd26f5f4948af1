"""Listing and reading dataset sources for real: local files, an HTTP server, an S3 server (moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.api.datasets import DatasetSpec
from tessera.datacache.source import Source, SourceError
from tests.datacache.sources import S3_KEYS, http_server, put_objects, s3_server

FILES = {"train/a.bin": b"a" * 1000, "train/b.bin": b"b" * 2500, "val/c.bin": b"c" * 10, "README": b"hi"}


def tree(root: Path) -> Path:
    for name, body in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    return root


def spec(source: str, **fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "d", "source": source, **fields})


def listing(source: Source) -> list[tuple[str, int]]:
    return [(f.path, f.size) for f in source.list()]


def test_local_files_with_include_and_exclude(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    everything = Source(spec(f"file://{root}"))
    assert listing(everything) == sorted((k, len(v)) for k, v in FILES.items())
    chosen = Source(spec(f"file://{root}", include=["train/*"], exclude=["*b.bin"]))
    assert listing(chosen) == [("train/a.bin", 1000)]
    with chosen.open("train/a.bin", offset=990) as f:
        assert f.read() == b"a" * 10
    etag = chosen.list()[0].etag
    (root / "train/a.bin").write_bytes(b"A" * 1001)
    assert chosen.list()[0].etag != etag  # a changed file is seen to change


def test_s3_with_a_custom_endpoint() -> None:
    with s3_server() as endpoint:
        put_objects(endpoint, "bucket", {f"ds/{k}": v for k, v in FILES.items()})
        source = Source(spec("s3://bucket/ds", endpoint_url=endpoint), S3_KEYS)
        assert listing(source) == sorted((k, len(v)) for k, v in FILES.items())
        assert all(f.etag for f in source.list())
        with source.open("train/b.bin", offset=2000) as f:
            assert f.read() == b"b" * 500
        missing = Source(spec("s3://no-such-bucket/x", endpoint_url=endpoint), S3_KEYS)
        with pytest.raises(SourceError, match="does not exist"):
            missing.list()


def test_http_directory_listing_and_token(tmp_path: Path) -> None:
    root = tree(tmp_path / "web")
    with http_server(root, token="s3cret") as url:
        source = Source(spec(f"{url}/train/"), {"token": "s3cret"})
        assert listing(source) == [("a.bin", 1000), ("b.bin", 2500)]
        with source.open("b.bin") as f:
            assert f.read() == b"b" * 2500
        with pytest.raises(SourceError, match="was denied: check the dataset's credentials") as denied:
            Source(spec(f"{url}/train/"), {"token": "wrong"}).list()
        assert "s3cret" not in str(denied.value) and "wrong" not in str(denied.value)


def test_an_unreachable_source_says_so() -> None:
    from tests.pg import free_port

    with pytest.raises(SourceError, match="is unreachable"):
        Source(spec(f"http://127.0.0.1:{free_port()}/data/")).list()
