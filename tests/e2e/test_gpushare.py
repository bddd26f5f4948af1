"""Slices enforced on the simulated device, end to end: real control plane, agent, shims and workloads.

The workloads are the reference `burn`; their environment carries none of their slice's limits, so
what holds them to their slices is the node. Timing bounds are loose: the machine is shared and noisy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.gpushare.attribution import read_proc
from tests.e2e.cluster import LocalCluster, wait_until

BURN = ("python", "-m", "tessera.gpushare.burn")
# what Tessera itself puts in a task's environment: ids and places, never a slice's limits
CONTRACT = {
    "TESSERA_JOB_ID",
    "TESSERA_JOB_NAME",
    "TESSERA_PROJECT",
    "TESSERA_QUEUE",
    "TESSERA_TASK_ID",
    "TESSERA_TASK_GROUP",
    "TESSERA_TASK_INDEX",
    "TESSERA_ATTEMPT",
    "TESSERA_NODE",
    "TESSERA_SLICE_ID",
    "TESSERA_GPU_UUIDS",
    "TESSERA_SIM_DEVICE_DIR",
    "TESSERA_COOPERATIVE_FILE",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home", gpus="1xA100-80GB").start()
    yield c
    c.stop()


def task_state(cluster: LocalCluster, job: dict) -> dict:
    (state,) = (cluster.home / "node" / "jobs" / job["id"]).glob("*/state.json")
    return dict(json.loads(state.read_text()))


def environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(i.decode().split("=", 1) for i in items if b"=" in i)


def progress(cluster: LocalCluster, name: str) -> list[float]:
    lines = [json.loads(x) for x in cluster.cli("logs", name).stdout.splitlines() if x.startswith("{")]
    return [e["busy_fraction"] for e in lines if e["event"] == "progress"]


def test_a_slice_past_its_memory_ends_slice_oom_and_a_forged_slice_id_spares_the_neighbour(
    cluster: LocalCluster,
) -> None:
    hold = ("--memory", "2Gi", "--compute", "10", "--seconds", "16")
    neighbour = cluster.submit("neighbour", *BURN, *hold, flags=("--gpu-memory", "4Gi"))
    neighbour = cluster.wait_state("neighbour", "RUNNING")
    victim = neighbour["allocations"][0]["id"]
    pid = task_state(cluster, neighbour)["pid"]
    env = environ(pid)
    assert {k for k in env if k.startswith("TESSERA_")} <= CONTRACT
    assert not any(k.startswith(("CUDA_MPS_", "CUDA_DEVICE_")) for k in env)
    # the greedy task claims its neighbour's slice id and takes twice its own memory
    forged = f"TESSERA_SLICE_ID=$VICTIM exec {' '.join(BURN)} --memory 8Gi --compute 10"
    cluster.submit("greedy", "sh", "-c", forged, flags=("--gpu-memory", "4Gi", "-e", f"VICTIM={victim}"))
    greedy = cluster.wait_state("greedy", "FAILED", timeout=60)
    assert greedy["status"]["reason"] == "SliceOOM", greedy["status"]
    assert "8192 MiB of its 4096 MiB" in greedy["status"]["message"]
    events = [e["reason"] for e in cluster.api("GET", "/api/v1/jobs/greedy/events").json()]
    assert events.index("SliceMemoryExceeded") < events.index("SliceOOM")
    assert '"reason": "SIGTERM"' in cluster.cli("logs", "greedy").stdout  # stopped by the node's SIGTERM
    # the neighbour runs on, measured and enforced by the watchdog, shown beside its allocation
    top = wait_until(
        lambda: (
            (r := cluster.cli("top", "job", "neighbour", "-o", "json")).returncode == 0
            and (doc := json.loads(r.stdout))["slices"][0]["state"] != "unmeasured"
            and doc
        ),
        20,
        what="the node to report the neighbour's slice",
    )
    assert "neighbour" in cluster.cli("top", "node").stdout
    (measured,) = top["slices"]
    assert (measured["tier"], measured["used_memory_mib"], measured["memory_mib"]) == ("watchdog", 2048, 4096)
    node = json.loads(cluster.cli("top", "node", "-o", "json").stdout)
    assert [(g["tier"], g["lost"]) for g in node[0]["gpus"]] == [("watchdog", False)]
    assert all(s["tier"] == "watchdog" for s in node[0]["slices"])
    wait_until(
        lambda: cluster.job("neighbour")["allocations"][0]["tier"] == "watchdog", 20, what="the slice's tier"
    )
    done = cluster.wait_state("neighbour", "SUCCEEDED", "FAILED", timeout=60)
    assert done["status"]["state"] == "SUCCEEDED", done["status"]


def test_a_slice_over_its_share_is_throttled_and_a_killed_agent_leaves_nothing_stopped(
    cluster: LocalCluster,
) -> None:
    r = cluster.cli("queue", "update", "default", "--compute-policy", "throttle", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["spec"]["enforcement"]["compute"] == "throttle"
    # long enough to outlive the checks below on a loaded machine (the cluster's stop ends it)
    run = ("--memory", "1Gi", "--compute", "100", "--seconds", "60", "--progress", "1")
    low = cluster.submit("low", *BURN, *run, flags=("--gpu-memory", "4Gi", "--gpu-compute", "20"))
    cluster.submit("high", *BURN, *run, flags=("--gpu-memory", "4Gi", "--gpu-compute", "80"))
    cluster.wait_state("low", "RUNNING")
    cluster.wait_state("high", "RUNNING")
    wait_until(lambda: len(progress(cluster, "low")) >= 7, 30, what="seven seconds of progress")
    lows, highs = progress(cluster, "low")[-4:], progress(cluster, "high")[-4:]
    low_share, high_share = sum(lows) / len(lows), sum(highs) / len(highs)
    # unthrottled, two full-time burns split the GPU about evenly; throttled, about 20/80
    assert low_share < 0.35 and high_share > 0.5 and high_share > 2 * low_share, (lows, highs)
    events = cluster.api("GET", "/api/v1/jobs/low/events").json()
    assert any(e["reason"] == "Throttled" and "20% compute share" in e["message"] for e in events)
    assert not any(e["reason"] == "Throttled" for e in cluster.api("GET", "/api/v1/jobs/high/events").json())
    pid = task_state(cluster, low)["pid"]
    wait_until(lambda: (info := read_proc(pid)) is not None and info.state == "T", 10, every=0.01)
    cluster.kill9_agent()  # while it holds the low slice stopped
    # the agent's watcher resumes what the agent stopped; the task runs on, and is never stopped again
    wait_until(lambda: (info := read_proc(pid)) is not None and info.state != "T", 5, every=0.05)
    for _ in range(20):
        info = read_proc(pid)
        assert info is not None and info.state != "T"
