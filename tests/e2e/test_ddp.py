"""A real two-worker torch DDP job (CPU, gloo) through the whole platform: `submit pytorchjob`,
the launch contract, per-rank logs, and identical weights on every rank at the end."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import ROOT, LocalCluster

pytest.importorskip("torch", reason="the DDP test needs torch (make test installs it)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def test_two_worker_ddp_trains_to_identical_weights(cluster: LocalCluster) -> None:
    script = str(ROOT / "examples" / "ddp_train.py")
    r = cluster.cli("submit", "pytorchjob", "--name", "ddp", "--workers", "2", "--", sys.executable, script)
    assert r.returncode == 0, r.stderr
    job = cluster.wait_state("ddp", "SUCCEEDED", "FAILED", timeout=120)
    logs = [cluster.cli("logs", "ddp", "-i", str(i)).stdout for i in (0, 1)]
    assert job["status"]["state"] == "SUCCEEDED", logs
    lines = [
        re.search(r"rank=(\d) world=2 first_loss=(\S+) last_loss=(\S+) weights=(\w+)", out) for out in logs
    ]
    assert all(lines), logs
    ranks = [int(m.group(1)) for m in lines if m]
    digests = {m.group(4) for m in lines if m}
    assert ranks == [0, 1] and len(digests) == 1  # every rank ends with the same weights
    assert all(float(m.group(3)) < float(m.group(2)) / 10 for m in lines if m)  # and it learned
    assert job["spec"]["kind"] == "pytorchjob" and job["status"]["master"]["port"] > 0
