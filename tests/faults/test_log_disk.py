"""The log disk full: tasks keep running and finish, their output is dropped (and counted), the
node says LogDiskFull through the API, and logs resume, with a note of the hole, once there is
space. The log disk is a small tmpfs (root only: CI runs as root)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Agent, FaultCluster, record, submit, wait_until

# prints a line every 20 ms until its stop file appears, then "done"
TALKER = (
    "import os, sys, time\n"
    "i = 0\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    print(f'line {i} ' + 'x' * 200, flush=True)\n"
    "    i += 1\n"
    "    time.sleep(0.02)\n"
    "print('done', flush=True)\n"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the log disk needs root (CI runs as root)")
    path = tmp_path / "logdisk"
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> int:
    """Fill the disk to the last byte; returns how much the filler holds."""
    written = 0
    with open(disk / "filler", "ab") as fh:
        block = b"\0" * 65536
        while True:
            try:
                written += os.write(fh.fileno(), block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                try:  # the last partial block
                    while True:
                        written += os.write(fh.fileno(), b"\0" * 512)
                except OSError:
                    return written


def _shown(text: str) -> str | None:
    """`tessera top node` once it shows the condition."""
    return text if "condition LogDiskFull" in text else None


def test_log_disk_full_tasks_keep_running_and_the_node_says_so(
    cluster: FaultCluster, small_disk: Path, tmp_path: Path
) -> None:
    agent = Agent(
        cluster, "logfull", tmp_path / "logfull", labels=("disk=small",), extra=("--log-dir", str(small_disk))
    ).start()
    try:
        wait_until(lambda: (cluster.node("logfull") or {}).get("state") == "Ready", 60, what="node logfull")
        stops = {name: tmp_path / f"stop-{name}" for name in ("during", "through")}
        for name, stop in stops.items():
            submit(
                cluster, name, ["python", "-c", TALKER, str(stop)], gpus=0.5, node_selector={"disk": "small"}
            )
        for name in stops:
            assert cluster.wait_state(name, "RUNNING")["tasks"][0]["node"] == "logfull"
            wait_until(lambda: "line 1 " in cluster.cli("logs", name).stdout, 30, what=f"{name}'s output")  # noqa: B023
        filler = fill(small_disk)
        full = wait_until(lambda: _condition(cluster), 30, what="the node to report LogDiskFull")
        assert "tasks keep running" in full["message"], full
        top = wait_until(lambda: _shown(cluster.cli("top", "node", "logfull").stdout), 30, what="top node")
        assert "(Ready)" in top and "tasks keep running" in top, top
        events = cluster.api("GET", "/api/v1/events", params={"kind": "node"}).json()
        assert any(e["reason"] == "LogDiskFull" and e["object_name"] == "logfull" for e in events), events
        # the tasks keep running while their output has nowhere to go ...
        assert all(cluster.job(name)["status"]["state"] == "RUNNING" for name in stops)
        stops["during"].touch()
        # ... and one ends as it would have: its last words are lost, its exit status is not
        during = cluster.wait_state("during", "SUCCEEDED", "FAILED", timeout=60)
        assert during["status"]["state"] == "SUCCEEDED" and during["tasks"][0]["exit_code"] == 0
        assert "line 1 " in cluster.cli("logs", "during").stdout
        assert _condition(cluster) is not None  # still full
        (small_disk / "filler").unlink()  # space again: the other writes again, after a note of the hole
        note = wait_until(
            lambda: _note(cluster.cli("logs", "through").stdout), 30, what="the log to resume with a note"
        )
        stops["through"].touch()
        through = cluster.wait_state("through", "SUCCEEDED", "FAILED", timeout=60)
        assert through["status"]["state"] == "SUCCEEDED" and through["tasks"][0]["exit_code"] == 0
        assert cluster.cli("logs", "through").stdout.rstrip().endswith("done")
        wait_until(lambda: _condition(cluster) is None, 30, what="LogDiskFull to clear")
        events = cluster.api("GET", "/api/v1/events", params={"kind": "node"}).json()
        assert any(e["reason"] == "LogDiskFullCleared" for e in events), [e["reason"] for e in events]
        cluster.assert_consistent()
        record(
            "log disk full (4 MiB tmpfs)",
            filler_bytes=filler,
            jobs=2,
            succeeded=2,
            dropped_note=note,
            condition="LogDiskFull on the node, then LogDiskFullCleared",
        )
    finally:
        agent.stop()


def _condition(cluster: FaultCluster) -> dict | None:
    node = cluster.node("logfull") or {}
    found = [c for c in node.get("inventory", {}).get("conditions", []) if c["type"] == "LogDiskFull"]
    return found[0] if found else None


def _note(log: str) -> str | None:
    for line in log.splitlines():
        if line.startswith("[tessera]") and "bytes of output dropped here" in line:
            return line
    return None
