"""Jobs run end to end on this machine: `tessera up`, its node agent, shims, logs, restarts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import ROOT, TESSERA, LocalCluster, _exists, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def task_pid(cluster: LocalCluster, job: dict) -> int:
    """The task's main pid, from its shim's state file."""
    files = list((cluster.home / "node" / "jobs" / job["id"]).glob("*/state.json"))
    assert files, "no task directory"
    return int(json.loads(files[0].read_text())["pid"])


def test_quickstart_job_succeeds_with_readable_logs(cluster: LocalCluster) -> None:
    cluster.submit(
        "hello", "python", "examples/hello_train.py", flags=("--gpu-memory", "4Gi", "--gpu-compute", "30")
    )
    job = cluster.wait_state("hello", "SUCCEEDED")
    assert job["status"]["reason"] == "Completed"
    assert [(t["state"], t["exit_code"]) for t in job["tasks"]] == [("SUCCEEDED", 0)]
    assert job["allocations"] == []  # slices are released when the job ends
    logs = cluster.cli("logs", "hello")
    assert logs.returncode == 0, logs.stderr
    assert "hello from rank 0 of 1" in logs.stdout and "GPUs SIM-" in logs.stdout
    assert re.search(r", slice [0-9a-f-]{36}\n", logs.stdout)  # its slice's id, never its limits
    assert logs.stdout.rstrip().endswith("done")
    assert cluster.cli("logs", "hello", "--tail", "1").stdout == "done\n"
    assert cluster.cli("logs", "hello", "--since", "1h").stdout == logs.stdout
    events = [e["reason"] for e in cluster.api("GET", "/api/v1/jobs/hello/events").json()]
    assert events == ["Submitted", "Scheduled", "Starting", "Running", "Completed"]
    nodes = cluster.api("GET", "/api/v1/nodes").json()
    assert all(g["simulated"] for g in nodes[0]["inventory"]["gpus"])


def test_follow_streams_until_the_task_ends(cluster: LocalCluster) -> None:
    cluster.submit(
        "slow", "python", "examples/hello_train.py", flags=("-e", "STEP_SECONDS=0.5", "-e", "STEPS=4")
    )
    cluster.wait_state("slow", "RUNNING")
    started = time.monotonic()
    follow = cluster.cli("logs", "-f", "slow", timeout=60)
    assert follow.returncode == 0 and follow.stdout.rstrip().endswith("done")
    assert time.monotonic() - started > 0.5  # it waited for output, not just read the file once
    cluster.wait_state("slow", "SUCCEEDED", timeout=20)


def test_missing_command_is_a_start_error(cluster: LocalCluster) -> None:
    cluster.submit("nocmd", "definitely-not-a-command-xyz")
    job = cluster.wait_state("nocmd", "FAILED")
    assert job["status"]["reason"] == "StartError"
    assert "definitely-not-a-command-xyz" in job["status"]["message"]
    assert job["tasks"][0]["exit_code"] == 127
    assert cluster.api("GET", "/readyz").status_code == 200
    cluster.submit("after", "true")
    cluster.wait_state("after", "SUCCEEDED")


def test_exit_codes_fail_the_job_and_retries_make_new_attempts(cluster: LocalCluster) -> None:
    cluster.submit("three", "python", "-c", "import sys; print('bye'); sys.exit(3)")
    job = cluster.wait_state("three", "FAILED")
    assert job["status"]["reason"] == "Error" and job["status"]["exit_code"] == 3
    assert job["tasks"][0]["exit_code"] == 3
    cluster.submit("retry", "sh", "-c", "exit 5", flags=("--retries", "1"))
    job = cluster.wait_state("retry", "FAILED")
    assert job["status"]["reason"] == "RetriesExhausted" and job["status"]["attempt"] == 1
    assert [a["number"] for a in job["attempts"]] == [0, 1]
    reasons = [e["reason"] for e in cluster.api("GET", "/api/v1/jobs/retry/events").json()]
    assert reasons.count("Running") == 2 and "Error" in reasons


def test_cancel_kills_the_process_group(cluster: LocalCluster) -> None:
    job = cluster.submit("long", "sh", "-c", "sleep 300 & sleep 300")
    cluster.wait_state("long", "RUNNING")
    pid = task_pid(cluster, job)
    assert _exists(pid)
    assert cluster.cli("cancel", "long").returncode == 0
    wait_until(lambda: not _exists(pid), 20, what="the task to be killed")
    done = wait_until(lambda: (j := cluster.job("long"))["tasks"][0]["exit_code"] is not None and j, 20)
    assert done["status"]["state"] == "CANCELLED" and done["tasks"][0]["exit_code"] == 143


def test_what_does_not_fit_now_waits_with_a_reason(cluster: LocalCluster) -> None:
    for name in ("a", "b"):
        cluster.submit(name, "sleep", "300", flags=("--gpus", "1"))
    cluster.wait_state("b", "RUNNING")
    cluster.submit("c", "sleep", "300", flags=("--gpus", "1"))
    reason = wait_until(
        lambda: (
            (cluster.job("c")["status"].get("pending_reason") or {}).get("code") == "Reserved"
            and cluster.job("c")["status"]["pending_reason"]
        ),
        20,
    )
    assert "c" in cluster.cli("get", "c").stdout and reason["message"] in cluster.cli("get", "c").stdout
    # it waits for one of the two jobs (neither declared a runtime, so which one is by id)
    assert re.search("once '[ab]' ends", reason["message"]) and "no expected runtime" in reason["message"]
    refused = cluster.cli("submit", "train", "--name", "huge", "--gpu-memory", "500Gi", "--", "x")
    assert refused.returncode == 1 and "exceeds the largest GPU (80Gi)" in refused.stderr
    cluster.cli("cancel", "a")
    cluster.wait_state("c", "RUNNING")


def test_control_plane_killed_mid_job(cluster: LocalCluster) -> None:
    cluster.submit("survivor", "sh", "-c", "sleep 4; echo finished; exit 7")
    cluster.wait_state("survivor", "RUNNING")
    cluster.kill9_control_plane()
    time.sleep(5)  # the task ends while the control plane is down
    cluster.start()
    job = cluster.wait_state("survivor", "FAILED")
    assert job["tasks"][0]["exit_code"] == 7 and job["status"]["exit_code"] == 7
    assert "finished" in cluster.cli("logs", "survivor").stdout


def test_agent_killed_mid_job_and_readopted(cluster: LocalCluster) -> None:
    job = cluster.submit("steady", "sh", "-c", "sleep 4; echo ok")
    cluster.wait_state("steady", "RUNNING")
    pid = task_pid(cluster, job)
    old_agent = cluster.agent_pid()
    cluster.kill9_agent()
    assert _exists(pid), "the task must survive its agent"
    # `tessera up` again (the control plane is still up on its port) brings the agent back
    restart = subprocess.Popen(
        [
            TESSERA,
            "node",
            "--name",
            cluster.api("GET", "/api/v1/nodes").json()[0]["name"],
            "--state-dir",
            str(cluster.home / "node"),
            "--url",
            cluster.url,
            "--token-file",
            str(cluster.home / "node" / "token"),
            "--simulate-gpus",
            cluster.gpus,
        ],
        env=cluster.env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        job = cluster.wait_state("steady", "SUCCEEDED", timeout=60)
        assert job["tasks"][0]["exit_code"] == 0
        assert cluster.agent_pid() == restart.pid != old_agent
        assert "ok" in cluster.cli("logs", "steady").stdout
    finally:
        restart.terminate()
        restart.wait(timeout=20)


def test_second_agent_with_the_same_name_is_refused(cluster: LocalCluster) -> None:
    name = cluster.api("GET", "/api/v1/nodes").json()[0]["name"]
    r = cluster.cli(
        "node",
        "--name",
        name,
        "--state-dir",
        str(cluster.home / "node"),
        "--url",
        cluster.url,
        "--token-file",
        str(cluster.home / "node" / "token"),
        timeout=30,
    )
    assert r.returncode == 1 and "another agent" in r.stderr


def test_up_again_reuses_the_agent(cluster: LocalCluster) -> None:
    agent = cluster.agent_pid()
    cluster.kill9_control_plane()
    cluster.start()
    assert cluster.agent_pid() == agent


def test_node_that_stops_heartbeating_loses_its_jobs(tmp_path: Path) -> None:
    c = LocalCluster(home=tmp_path / "home", env_extra={"TESSERA_NODE_HEARTBEAT_TIMEOUT": "3"}).start()
    try:
        c.submit("orphan", "sleep", "300")
        c.wait_state("orphan", "RUNNING")
        os.kill(c.agent_pid(), 19)  # SIGSTOP: alive but silent, like a partitioned node
        job = c.wait_state("orphan", "FAILED", timeout=30)
        assert job["status"]["reason"] == "NodeLost"
        assert c.node_state() == "NotReady"
        os.kill(c.agent_pid(), 18)  # SIGCONT: it comes back, re-registers, stops the orphan task
        wait_until(lambda: c.node_state() == "Ready", 20)
    finally:
        c.stop()


def test_huge_logs_stream_in_bounded_memory(cluster: LocalCluster) -> None:
    cluster.submit("chatty", "sh", "-c", "head -c 60000000 /dev/zero | tr '\\0' 'x'; echo; echo end")
    cluster.wait_state("chatty", "SUCCEEDED", timeout=90)
    assert cluster.up is not None
    rss_before = _rss_kib(cluster.up.pid)
    size = 0
    with subprocess.Popen(
        [TESSERA, "logs", "chatty"], env=cluster.env(), stdout=subprocess.PIPE, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            size += len(chunk)
    assert size == 60_000_000 + len("\nend\n")
    assert _rss_kib(cluster.up.pid) - rss_before < 60_000  # the API relayed, it did not buffer
    assert cluster.cli("logs", "chatty", "--tail", "1").stdout == "end\n"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
