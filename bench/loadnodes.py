"""The load test's simulated nodes: registered with the control plane, kept Ready by heartbeats
and, unless jobs are to pile up, run by a stand-in agent that starts each bound task and ends it
``job_seconds`` later, so binds free their slices again and the backlog drains the way it does on
a real cluster.

The stand-in does what a node agent does over the API (tessera/node/feed.py, reports): it follows
the job change feed from a list, reports a task RUNNING when it is bound to one of its nodes and
SUCCEEDED when its time is up, in one batched report per node every ``REPORT_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

HEARTBEAT_S = 10.0  # the control plane marks a node NotReady after 40 s of silence
REPORT_EVERY_S = 0.5
WATCH_TIMEOUT_S = 20.0
_STARTABLE = ("PENDING", "STARTING")


@dataclass
class NodeWork:
    """What the stand-in agents did, for the report."""

    started: int = 0  # tasks reported RUNNING
    finished: int = 0  # tasks reported SUCCEEDED
    report_calls: int = 0
    relists: int = 0
    errors: list[str] = field(default_factory=list)


def inventory(node: int, gpus: int) -> dict[str, Any]:
    return {
        "name": f"lnode{node}",
        "inventory": {
            "gpus": [
                {
                    "uuid": f"GPU-load-{node}-{g}",
                    "index": g,
                    "model": "NVIDIA A100-SXM4-80GB",
                    "memory_mib": 81920,
                    "simulated": True,
                }
                for g in range(gpus)
            ],
            "cpu": 128,
            "memory": "1024Gi",
            "simulated": True,
        },
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Agents:
    """Stand-in agents for ``names``: one feed for all of them, one report per node per tick."""

    def __init__(self, http: httpx.AsyncClient, names: list[str], job_seconds: float, work: NodeWork):
        self.http, self.names, self.job_seconds, self.work = http, set(names), job_seconds, work
        self.revision = -1
        self.seen: set[tuple[uuid.UUID, int]] = set()  # (task, attempt) reported RUNNING
        self.to_start: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        self.running: list[tuple[float, str, dict[str, Any]]] = []  # (ends at, node, report)

    def take(self, job: dict[str, Any]) -> None:
        """A job's latest version: start its tasks bound to our nodes (once per attempt)."""
        attempt = int(job["status"]["attempt"])
        for task in job["tasks"]:
            node = task.get("node")
            key = (uuid.UUID(task["id"]), attempt)
            if node in self.names and task["state"] in _STARTABLE and key not in self.seen:
                self.seen.add(key)
                report = {"task_id": task["id"], "attempt": attempt}
                self.to_start[node].append({**report, "state": "RUNNING", "started_at": _now()})
                self.running.append((time.monotonic() + self.job_seconds, node, report))

    async def relist(self) -> None:
        self.work.relists += 1
        revision = None
        for name in sorted(self.names):
            page = await self.http.get(f"/api/v1/nodes/{name}/assignments")
            page.raise_for_status()
            body = page.json()
            revision = body["revision"] if revision is None else min(revision, body["revision"])
            for job in body["items"]:
                self.take(job)
        self.revision = int(revision if revision is not None else 0)

    async def follow(self, stop: asyncio.Event) -> None:
        """The change feed of jobs, re-listing when it was compacted past us."""
        while not stop.is_set():
            try:
                if self.revision < 0:
                    await self.relist()
                params: dict[str, str | int | float] = {
                    "since": self.revision,
                    "kind": "job",
                    "timeout": WATCH_TIMEOUT_S,
                }
                async with self.http.stream("GET", "/api/v1/watch", params=params) as response:
                    if response.status_code == 410:
                        self.revision = -1
                        continue
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if stop.is_set():
                            return
                        if not line:
                            continue
                        item = json.loads(line)
                        if item.get("type") == "ERROR":
                            self.revision = -1
                            break
                        if item.get("object") is not None and item.get("kind") == "job":
                            self.take(item["object"])
                        self.revision = max(self.revision, int(item.get("revision", self.revision)))
            except (httpx.HTTPError, ValueError) as exc:
                self.work.errors.append(f"watch: {type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(1.0)

    async def report(self, stop: asyncio.Event) -> None:
        """Every tick: each node's starts and the tasks whose time is up, in one report per node."""
        while not stop.is_set():
            await asyncio.sleep(REPORT_EVERY_S)
            now = time.monotonic()
            due = [r for r in self.running if r[0] <= now]
            self.running = [r for r in self.running if r[0] > now]
            batches = {name: self.to_start[name] for name in self.names}
            self.to_start = {name: [] for name in self.names}
            for _, node, report in due:
                finished = {**report, "state": "SUCCEEDED", "exit_code": 0, "finished_at": _now()}
                batches[node].append(finished)
            for node, reports in batches.items():
                if not reports:
                    continue
                try:
                    r = await self.http.post(f"/api/v1/nodes/{node}/reports", json={"reports": reports})
                    r.raise_for_status()
                except httpx.HTTPError as exc:  # a real agent keeps them for the next report
                    self.work.errors.append(f"report: {type(exc).__name__}: {exc}"[:200])
                    again = [x for x in reports if x["state"] == "RUNNING"]
                    self.to_start[node] = again + self.to_start[node]
                    self.running += [(now, node, x) for x in reports if x["state"] == "SUCCEEDED"]
                    continue
                self.work.report_calls += 1
                self.work.started += sum(1 for x in reports if x["state"] == "RUNNING")
                self.work.finished += sum(1 for x in reports if x["state"] == "SUCCEEDED")
