"""Several agents on one machine make a multi-node cluster: cross-node gangs, keep-tasks restarts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import ROOT, TESSERA, LocalCluster, _exists, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def start_second_node(cluster: LocalCluster, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    assert cluster.api("POST", "/api/v1/users", json={"name": f"agent-{name}"}).status_code == 201
    r = cluster.api(
        "POST", "/api/v1/tokens", json={"name": name, "user": f"agent-{name}", "scopes": ["node"]}
    )
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(r.json()["secret"])
    agent = subprocess.Popen(
        [
            TESSERA,
            "node",
            "--name",
            name,
            "--state-dir",
            str(tmp_path / name),
            "--url",
            cluster.url,
            "--token-file",
            str(token_file),
            "--simulate-gpus",
            "2xA100-80GB",
        ],
        env=cluster.env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(
        lambda: any(
            n["name"] == name and n["state"] == "Ready" for n in cluster.api("GET", "/api/v1/nodes").json()
        ),
        30,
    )
    return agent


def test_gang_across_two_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    agent = start_second_node(cluster, tmp_path, "node-b")
    try:
        cluster.submit(
            "ddp",
            "sh",
            "-c",
            "echo rank=$RANK world=$WORLD_SIZE gpus=$CUDA_VISIBLE_DEVICES master=$MASTER_ADDR:$MASTER_PORT",
            flags=("--workers", "2", "--gpus", "2"),
        )
        job = cluster.wait_state("ddp", "SUCCEEDED")
        nodes = sorted(t["node"] for t in job["tasks"])
        assert len(set(nodes)) == 2 and "node-b" in nodes  # each task needs both GPUs of a node
        outputs = [cluster.cli("logs", "ddp", "-i", str(i)).stdout for i in (0, 1)]
        assert outputs[0].startswith("rank=0 world=2") and outputs[1].startswith("rank=1 world=2")
        assert outputs[0].split("master=")[1] == outputs[1].split("master=")[1]
        assert all(len(o.split("gpus=")[1].split()[0].split(",")) == 2 for o in outputs)
        # a 3-task gang of 2-GPU tasks can never fit two 2-GPU nodes: it waits, holding nothing
        cluster.submit("big", "true", flags=("--workers", "3", "--gpus", "2"))
        reason = wait_until(
            lambda: (
                cluster.job("big")["status"]["pending_reason"]["code"] == "GangTooLarge"
                and cluster.job("big")
            ),
            20,
        )
        assert reason["allocations"] == []
    finally:
        agent.terminate()
        agent.wait(timeout=20)


def test_down_keep_tasks_then_up_readopts(cluster: LocalCluster) -> None:
    cluster.submit("keeper", "sh", "-c", "sleep 5; echo kept")
    cluster.wait_state("keeper", "RUNNING")
    down = cluster.cli("down", "--keep-tasks")
    assert down.returncode == 0 and "tasks left running" in down.stdout
    assert cluster.up is not None
    cluster.up.wait(timeout=20)
    shims = list((cluster.home / "node" / "jobs").glob("*/*/state.json"))
    assert shims, "the task's shim state is on disk"
    cluster.start()
    job = cluster.wait_state("keeper", "SUCCEEDED", timeout=60)
    assert job["tasks"][0]["exit_code"] == 0
    assert cluster.cli("logs", "keeper").stdout == "kept\n"


def test_down_cancels_tasks_and_delete_removes_logs(cluster: LocalCluster) -> None:
    job = cluster.submit("victim", "sleep", "300")
    cluster.wait_state("victim", "RUNNING")
    job_dir = cluster.home / "node" / "jobs" / job["id"]
    pid = int(next(job_dir.glob("*/state.json")).read_text().split('"pid": ')[1].split(",")[0])
    cluster.submit("done", "echo", "hi")
    done = cluster.wait_state("done", "SUCCEEDED")
    done_dir = cluster.home / "node" / "jobs" / done["id"]
    assert done_dir.exists()
    assert cluster.cli("delete", "done").returncode == 0
    wait_until(lambda: not done_dir.exists(), 20, what="the deleted job's logs to be removed")
    assert cluster.cli("down").returncode == 0
    assert not _exists(pid), "down cancels running tasks unless --keep-tasks"


def test_one_failed_rank_ends_the_whole_gang(cluster: LocalCluster) -> None:
    # rank 1 fails at once; rank 0 would run for a minute: the job fails as a whole, and rank 0 is
    # stopped with it rather than left running
    script = 'if [ "$RANK" = 1 ]; then exit 3; fi; echo "rank $RANK waiting"; sleep 60'
    r = cluster.cli("submit", "pytorchjob", "--name", "gang", "--workers", "2", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    job = cluster.wait_state("gang", "FAILED", timeout=60)
    assert job["status"]["reason"] == "Error" and "exited with code 3" in job["status"]["message"]
    ended = wait_until(
        lambda: all(t["state"] in ("FAILED", "CANCELLED") for t in cluster.job("gang")["tasks"]), 30
    )
    assert ended
