"""`tessera data` and `tessera secret` against a real control plane (which lists the source itself)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import Server, start
from tests.e2e.cluster import wait_until
from tests.pg import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start(tmp_path / "home", free_port())
    yield srv
    srv.stop()


def test_data_and_secret_verbs(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    for i in range(4):
        (root / "train" / f"{i}.bin").write_bytes(b"x" * 2048)
    r = server.run("secret", "create", "creds", "--from-literal", "token=hunter2", "--from-literal", "x=y")
    assert r.returncode == 0 and "keys token, x" in r.stdout and "hunter2" not in r.stdout, r.stderr
    listed = server.run("secret", "list", "-o", "json")
    assert "hunter2" not in listed.stdout and json.loads(listed.stdout)[0]["keys"] == ["token", "x"]

    r = server.run(
        "data", "create", "ds", "--source", f"file://{root}", "--include", "train/*", "--capacity", "1Gi"
    )
    assert r.returncode == 0, r.stderr
    got = wait_until(
        lambda: (
            (d := json.loads(server.run("data", "get", "ds", "-o", "json").stdout))["status"]["phase"]
            == "NotCached"
            and d
        ),
        30,
        what="the source to be listed",
    )
    assert got["status"]["total_bytes"] == 4 * 2048 and got["spec"]["cache"]["capacity_per_node"] == 1024
    table = server.run("data", "list")
    assert "ds" in table.stdout and "NotCached" in table.stdout and "8.0KiB" in table.stdout, table.stdout
    r = server.run("data", "load", "ds")  # this control plane has no node agent
    assert r.returncode == 1 and "no Ready node to load dataset 'ds' on" in r.stderr, r.stderr

    bad = server.run("data", "create", "bad", "--source", "bucket/x")
    assert bad.returncode == 1 and "source" in bad.stderr and "s3://bucket/prefix" in bad.stderr
    assert server.run("secret", "delete", "creds").returncode == 0
    assert server.run("data", "delete", "ds").returncode == 0
    assert json.loads(server.run("data", "list", "-o", "json").stdout) == []
