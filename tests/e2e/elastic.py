"""Looking into a running elastic job: what its driver reported, its Ray Train workers, its events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tessera.jobs.elastic.events import FILE, TrainEvent, read
from tessera.node.procs import descendants
from tests.e2e.cluster import LocalCluster


def train_events(cluster: LocalCluster, job: dict[str, Any]) -> list[TrainEvent]:
    found = list((cluster.home / "node").rglob(f"{job['id']}/*/{FILE}"))
    return read(found[0])[0] if found else []


def train_worker_pid(cluster: LocalCluster, job: dict[str, Any]) -> int:
    """A Ray Train worker process of the job: a descendant of one of its tasks' shims."""
    for state in (cluster.home / "node").rglob(f"{job['id']}/*/state.json"):
        shim = json.loads(state.read_text())
        if shim.get("exit_code") is not None:
            continue
        for pid in descendants(int(shim["shim_pid"])):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"RayTrainWorker" in title:
                return pid
    raise AssertionError("no Ray Train worker process found under the job's tasks")


def events(cluster: LocalCluster, job: dict[str, Any]) -> list[dict[str, Any]]:
    r = cluster.api("GET", "/api/v1/events", params={"object_id": job["id"], "limit": 500})
    return list(r.json())
