"""`tessera queue` verbs against a real control plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import Server, start
from tests.pg import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start(tmp_path / "home", free_port())
    yield srv
    srv.stop()


def test_queue_lifecycle(server: Server) -> None:
    r = server.run(
        "queue",
        "create",
        "research",
        "--guaranteed",
        "gpu=4,cpu=32,memory=128Gi",
        "--borrowing-limit",
        "gpu=2",
        "--weight",
        "2",
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    queue = json.loads(r.stdout)[0]
    assert queue["spec"]["guaranteed"] == {"gpu": 4.0, "cpu": 32.0, "memory": 131072}
    assert queue["spec"]["borrowing_limit"]["gpu"] == 2.0 and queue["spec"]["weight"] == 2.0
    assert server.run("queue", "create", "vision", "--parent", "research").returncode == 0
    listed = server.run("queue", "list").stdout
    assert "research" in listed and "vision" in listed and "unlimited" in listed
    updated = json.loads(server.run("queue", "update", "vision", "--weight", "3", "-o", "json").stdout)
    assert updated[0]["spec"]["weight"] == 3.0 and updated[0]["spec"]["parent"] == "research"
    assert updated[0]["spec"]["placement"] is None
    packed = json.loads(
        server.run("queue", "update", "vision", "--placement", "packing", "-o", "json").stdout
    )
    assert packed[0]["spec"]["placement"] == "packing" and packed[0]["spec"]["weight"] == 3.0
    assert "packing" in server.run("queue", "get", "vision").stdout
    enforced = server.run("queue", "update", "vision", "--compute-policy", "throttle", "-o", "json")
    assert json.loads(enforced.stdout)[0]["spec"]["enforcement"] == {"memory": None, "compute": "throttle"}
    reported = server.run("queue", "update", "vision", "--memory-policy", "report", "-o", "json")
    assert json.loads(reported.stdout)[0]["spec"]["enforcement"] == {
        "memory": "report",
        "compute": "throttle",
    }
    assert "report/throttle" in server.run("queue", "get", "vision").stdout
    assert server.run("queue", "delete", "vision").returncode == 0
    assert server.run("queue", "get", "vision").returncode == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["create", "a", "--parent", "nope"], "parent queue 'nope' does not exist"),
        (["create", "b", "--guaranteed", "gpu=-1"], "greater than or equal to 0"),
        (["create", "c", "--weight", "0"], "weight"),
        (
            ["create", "d", "--placement", "tetris"],
            "unknown placement policy 'tetris'; valid: one of tessera",
        ),
        (
            ["create", "e", "--memory-policy", "nuke"],
            "enforcement.memory: unknown memory policy 'nuke'; valid: kill, report",
        ),
        (["create", "f", "--compute-policy", "fair"], "valid: measure, throttle, strict"),
    ],
)
def test_bad_queues_are_refused_with_a_reason(server: Server, args: list[str], says: str) -> None:
    r = server.run("queue", *args)
    assert r.returncode == 1 and says in r.stderr, r.stderr


def test_cycles_and_bad_spellings(server: Server) -> None:
    assert server.run("queue", "create", "top").returncode == 0
    assert server.run("queue", "create", "mid", "--parent", "top").returncode == 0
    cycle = server.run("queue", "update", "top", "--parent", "mid")
    assert cycle.returncode == 1 and "cycle" in cycle.stderr
    usage = server.run("queue", "create", "x", "--guaranteed", "gpus=4")
    assert usage.returncode == 2 and "gpu=N,cpu=N,memory=QTY" in usage.stderr
