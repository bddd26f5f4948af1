"""A real elastic job on its own Ray cluster (CPU, gloo) through the whole platform.

It starts with one worker while another job holds the second GPU, grows to two when that job
ends, gives the slice back when a new job needs it (a reclaim, not a failure), recovers from a
killed training worker (a failure, counted), and ends with a lower loss, having resumed from its
latest checkpoint after every restart.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import LocalCluster, wait_until
from tests.e2e.elastic import events, train_events, train_worker_pid

pytest.importorskip("torch", reason="elastic training needs torch (make test installs it)")
pytest.importorskip("ray.train", reason="elastic training needs ray[train] (make test installs it)")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
EVERY = 10  # checkpoint_every in the training config


def ray_processes(job_id: str) -> list[int]:
    """Live processes of the job's Ray cluster: their command lines name its Ray temp dirs."""
    mark = f"/tray/{job_id[:8]}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def workers(cluster: LocalCluster, name: str, count: int, timeout: float) -> dict[str, Any]:
    """Wait until Ray Train runs the job's worker group at ``count`` and the job is RUNNING."""
    return dict(
        wait_until(
            lambda: (
                (j := cluster.job(name))["status"]["state"] == "RUNNING"
                and j["status"]["workers"] == count
                and j
            ),
            timeout,
            what=f"{name} running with {count} workers: {cluster.job(name)['status']}",
        )
    )


def test_elastic_job_grows_shrinks_and_finishes(cluster: LocalCluster, tmp_path: Path) -> None:
    blocker = cluster.submit("blocker", *SLEEPER, flags=("--gpus", "1"))
    cluster.wait_state("blocker", "RUNNING")
    stop = tmp_path / "stop"
    r = cluster.cli(
        "submit", "etjob", "--name", "el", "--min-workers", "1", "--max-workers", "2", "--gpus", "1",
        "--entry", "examples/elastic_train.py", "--set", "steps=100000", "--set", f"checkpoint_every={EVERY}",
        "--set", "step_seconds=0.05", "--set", f"stop_file={stop}", "-o", "json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    job = workers(cluster, "el", 1, 120)
    assert ray_processes(job["id"])  # the job's own Ray cluster, found by its temp dirs

    # the blocker ends: its GPU is granted, and Ray Train grows into it
    assert cluster.cli("cancel", "blocker").returncode == 0
    job = workers(cluster, "el", 2, 120)
    assert any(e["reason"] == "Resized" and "1 -> 2 workers" in e["message"] for e in events(cluster, job))
    # training reports from both workers before the GPU is wanted back (a loaded machine can be slow)
    wait_until(
        lambda: any(e.event == "report" and e.workers == 2 for e in train_events(cluster, job)),
        120,
        what="a training report at 2 workers",
    )

    # a new job needs a GPU: the extra worker is given back (drained as a preemption)
    cluster.submit("urgent", *SLEEPER, flags=("--gpus", "1"))
    cluster.wait_state("urgent", "RUNNING", timeout=120)
    job = workers(cluster, "el", 1, 120)
    assert cluster.job("blocker")["status"]["state"] == "CANCELLED"
    reasons = [e["reason"] for e in events(cluster, job)]
    assert "Reclaimed" in reasons and "Resized" in reasons
    # a reclaim is not the job's failure
    history = [(e["reason"], e["message"][:300]) for e in events(cluster, job)]
    assert job["status"]["failures"] == 0, "\n".join(map(str, history))

    # a training worker is killed: Ray Train restarts from the latest checkpoint, and that counts
    seen = len(train_events(cluster, job))
    wait_until(lambda: len(train_events(cluster, job)) > seen + 2, 120, what="progress after the shrink")
    victim = train_worker_pid(cluster, job)
    os.kill(victim, signal.SIGKILL)
    recovered = wait_until(
        lambda: (
            (j := cluster.job("el"))["status"]["failures"] == 1 and j["status"]["state"] == "RUNNING" and j
        ),
        120,
        what="the job to recover from the killed worker",
    )
    history = [e["reason"] for e in events(cluster, recovered)]
    assert "WorkerFailed" in history and "Recovered" in history, history

    # let it make progress again, then stop it at the next checkpoint
    seen = len(train_events(cluster, job))
    wait_until(lambda: len(train_events(cluster, job)) > seen + 2, 120, what="progress after the kill")
    stop.touch()
    done = cluster.wait_state("el", "SUCCEEDED", "FAILED", timeout=120)
    assert done["status"]["state"] == "SUCCEEDED", cluster.cli("logs", "el", "--tail", "60").stdout

    reports = [e for e in train_events(cluster, job) if e.event == "report"]
    assert {e.workers for e in reports} == {1, 2}
    losses = [e.metrics["loss"] for e in reports if e.metrics]
    assert losses[-1] < losses[0] / 10, losses  # it learned, across the resizes
    # after every restart, training resumed right after its latest checkpoint: no step redone
    # beyond it, none skipped
    steps = [e.step for e in reports if e.step is not None]
    for before, after in zip(steps, steps[1:], strict=False):
        assert after == before + EVERY, steps
    assert blocker["status"]["state"] in ("PENDING", "SCHEDULED", "STARTING", "RUNNING")
    # nothing of the job's Ray cluster outlives it
    wait_until(lambda: not ray_processes(job["id"]), 30, what="the job's Ray processes to exit")
