"""Datasets through a real single-machine Tessera: the control plane lists the source, the node agent
loads it into its cache (from moto's S3 server), progress and cached percent come back."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.datacache.sources import S3_KEYS, put_objects, s3_server
from tests.e2e.cluster import LocalCluster, wait_until

MIB = 1024 * 1024


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def dataset(cluster: LocalCluster, name: str) -> dict[str, Any]:
    r = cluster.cli("data", "get", name, "-o", "json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_a_dataset_from_s3_is_loaded_into_the_node_cache(cluster: LocalCluster) -> None:
    with s3_server() as endpoint:
        objects = {f"imgs/{i:02d}.bin": bytes([i]) * (MIB // 4) for i in range(12)}
        objects["imgs/skip.txt"] = b"not this one"
        put_objects(endpoint, "data", objects)
        keys = [f"--from-literal={k}={v}" for k, v in S3_KEYS.items()]
        assert cluster.cli("secret", "create", "minio", *keys).returncode == 0
        r = cluster.cli(
            "data", "create", "imgs", "--source", "s3://data/imgs", "--endpoint-url", endpoint,
            "--credentials", "minio", "--exclude", "*.txt",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        listed = wait_until(
            lambda: (d := dataset(cluster, "imgs"))["status"]["phase"] == "NotCached" and d,
            60,
            what="the source to be listed",
        )
        assert listed["status"]["total_files"] == 12 and listed["status"]["total_bytes"] == 3 * MIB
        r = cluster.cli("data", "load", "imgs", "--wait", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Succeeded" in r.stdout and "100%" in r.stdout, r.stdout
        ready = wait_until(
            lambda: (d := dataset(cluster, "imgs"))["status"]["phase"] == "Ready" and d,
            30,
            what="the dataset to be Ready",
        )
    status = ready["status"]
    assert status["cached_percent"] == 100 and status["nodes"][0]["cached_files"] == 12
    assert status["nodes"][0]["source_reads"] == 12
    cached = list((cluster.home / "node" / "cache" / "data").rglob("*.bin"))
    assert len(cached) == 12 and all(p.stat().st_size == MIB // 4 for p in cached)
    # a second load finds everything cached: nothing is read from the source (it is gone now)
    r = cluster.cli("data", "load", "imgs", "--wait", timeout=60)
    assert r.returncode == 0 and "Succeeded" in r.stdout, r.stdout + r.stderr
    loads = json.loads(cluster.cli("data", "get", "imgs", "-o", "json").stdout)
    assert loads["status"]["nodes"][0]["source_reads"] == 12
    events = cluster.api("GET", "/api/v1/events", params={"kind": "dataset"}).json()
    assert {"Listed", "LoadStarted", "LoadSucceeded", "Ready"} <= {e["reason"] for e in events}
    # deleted: the node drops its copy
    assert cluster.cli("data", "delete", "imgs").returncode == 0
    data = cluster.home / "node" / "cache" / "data"
    wait_until(lambda: not list(data.rglob("*.bin")), 30, what="the node to drop the deleted dataset")


def test_a_job_mounting_a_dataset_reads_the_nodes_copy(cluster: LocalCluster, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "shards").mkdir(parents=True)
    for i in range(5):
        (root / "shards" / f"{i}.txt").write_text(f"shard {i}\n" * 100)
    assert cluster.cli("data", "create", "corpus", "--source", f"file://{root}").returncode == 0
    wait_until(lambda: dataset(cluster, "corpus")["status"]["phase"] == "NotCached", 60, what="listing")
    reader = (
        "import os, pathlib; p = pathlib.Path(os.environ['TESSERA_DATA_CORPUS']); "
        "files = sorted(p.rglob('*.txt')); print('path', p); "
        "print('files', len(files), 'bytes', sum(f.stat().st_size for f in files))"
    )
    flags = ("--data", "corpus:/data/corpus:required")
    cluster.submit("reader", sys.executable, "-c", reader, flags=flags)
    job = cluster.wait_state("reader", "SUCCEEDED", "FAILED", timeout=120)
    logs = cluster.cli("logs", "reader").stdout
    assert job["status"]["state"] == "SUCCEEDED", (job["status"], logs)
    assert f"files 5 bytes {5 * 800}" in logs, logs
    assert str(cluster.home / "node" / "cache" / "data") in logs  # the node's copy, never the source
    assert str(root) not in logs
    assert job["spec"]["data"][0]["dataset_id"] == dataset(cluster, "corpus")["id"]
    # the cache the job filled is what the dataset reports, and it is Ready
    ready = wait_until(lambda: dataset(cluster, "corpus")["status"]["phase"] == "Ready", 30, what="Ready")
    assert ready
    # the load the job's requirement started copied the files (5 source reads); the task then found
    # them all cached on its node (5 local hits)
    hits = wait_until(
        lambda: (n := dataset(cluster, "corpus")["status"]["nodes"][0])["local_hits"] == 5 and n,
        30,
        what="hits",
    )
    assert hits["source_reads"] == 5 and dataset(cluster, "corpus")["status"]["hit_ratio"] == 0.5

    # a job mounting an unknown dataset is refused, naming the field
    r = cluster.cli(
        "submit", "train", "--name", "nope", "--data", "ghost:/d", "--", sys.executable, "-c", "1"
    )
    assert r.returncode == 1 and "data.0.dataset" in r.stderr and "no dataset named 'ghost'" in r.stderr, (
        r.stderr
    )


def test_a_job_streams_a_dataset_through_the_block_cache(cluster: LocalCluster, tmp_path: Path) -> None:
    root = tmp_path / "stream"
    root.mkdir()
    (root / "big.bin").write_bytes(bytes(range(256)) * (9 * MIB // 256))  # 9 MiB: three 4 MiB blocks
    (root / "small.txt").write_text("hello\n")
    assert cluster.cli("data", "create", "st", "--source", f"file://{root}").returncode == 0
    wait_until(lambda: dataset(cluster, "st")["status"]["phase"] == "NotCached", 60, what="listing")
    reader = (
        "import hashlib; from tessera.datacache import open as data_open; "
        "f = data_open('st', 'big.bin'); f.seek(5 * 1024 * 1024); part = f.read(1000); f.seek(0); "
        "whole = f.read(); print('part', len(part), 'whole', len(whole), hashlib.sha256(whole).hexdigest()); "
        "print('small', data_open('st', 'small.txt').read())"
    )
    cluster.submit("streamer", sys.executable, "-c", reader, flags=("--data", "st:/data/st:stream"))
    job = cluster.wait_state("streamer", "SUCCEEDED", "FAILED", timeout=120)
    logs = cluster.cli("logs", "streamer").stdout
    assert job["status"]["state"] == "SUCCEEDED", (job["status"], logs)
    digest = hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    assert f"part 1000 whole {9 * MIB} {digest}" in logs and "small b'hello\\n'" in logs, logs
    # read in full, the streamed files are now the node's complete copies
    status = wait_until(
        lambda: (
            (d := dataset(cluster, "st"))["status"]["nodes"]
            and d["status"]["nodes"][0]["cached_files"] == 2
            and d
        ),
        30,
        what="the streamed files to be reported cached",
    )["status"]
    assert status["phase"] == "Ready" and status["nodes"][0]["source_reads"] == 4  # 3 blocks + 1


def test_a_second_node_reads_from_the_first_nodes_cache(cluster: LocalCluster, tmp_path: Path) -> None:
    from tests.e2e.test_multinode import start_second_node

    root = tmp_path / "shared"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.bin").write_bytes(bytes([i]) * (MIB // 2))
    assert cluster.cli("data", "create", "shared", "--source", f"file://{root}").returncode == 0
    wait_until(lambda: dataset(cluster, "shared")["status"]["phase"] == "NotCached", 60, what="listing")
    assert cluster.cli("data", "load", "shared", "--node", "vm", "--wait", timeout=120).returncode == 0
    wait_until(
        lambda: dataset(cluster, "shared")["status"]["nodes"], 30, what="the first copy to be reported"
    )
    agent = start_second_node(cluster, tmp_path, "node-b")
    try:
        r = cluster.cli("data", "load", "shared", "--node", "node-b", "--wait", timeout=120)
        assert r.returncode == 0 and "Succeeded" in r.stdout, r.stdout + r.stderr
        nodes = wait_until(
            lambda: (
                {n["node"]: n for n in dataset(cluster, "shared")["status"]["nodes"]}.get("node-b")
                and {n["node"]: n for n in dataset(cluster, "shared")["status"]["nodes"]}
            ),
            30,
            what="node-b's copy to be reported",
        )
    finally:
        agent.terminate()
        agent.wait(30)
    # node-b read every file from vm's cache over vm's agent, none from the source
    assert nodes["node-b"]["peer_hits"] == 6 and nodes["node-b"]["source_reads"] == 0, nodes
    assert nodes["node-b"]["cached_files"] == 6 and nodes["vm"]["source_reads"] == 6
    copies = list((tmp_path / "node-b" / "cache" / "data").rglob("*.bin"))
    assert sorted(p.read_bytes()[:1] for p in copies) == [bytes([i]) for i in range(6)]
