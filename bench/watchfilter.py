"""What a node agent's watch carries, with and without the node filter (``/api/v1/watch?node=``).

A control plane in process (SQLite) with ``--nodes`` simulated nodes of 8 GPUs; ``--jobs``
one-GPU jobs are submitted, bound by the scheduler, reported RUNNING and then SUCCEEDED by
their nodes, some preempted onto another node on the way (a job that leaves a node must still
reach it). Then each node's watch is read from revision 0 twice: every job change (an agent
before the filter) and only its node's (``node=``). Prints a markdown table: changes and bytes
per agent, and how many of the node's own jobs its filtered watch covered.

Run: ``.venv/bin/python -m bench.watchfilter [--nodes 16] [--jobs 800]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.loadlib import checked
from bench.loadnodes import inventory
from tessera.platform.app import create_app
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.services.execution import evict_job
from tessera.platform.settings import Settings


def _watch(client: TestClient, headers: dict[str, str], **params: Any) -> tuple[list[dict[str, Any]], int]:
    """The watch from revision 0 to the head, all of it: a stream ends at its timeout, so read
    until its bookmarks reach the head (each bookmark says the stream is caught up)."""
    head = checked(client.get("/api/v1/jobs", headers=headers, params={"limit": 1}), 200).json()["revision"]
    changes: list[dict[str, Any]] = []
    size, since = 0, 0
    while since < head:
        query = {"since": since, "kind": "job", "timeout": 2.0, **params}
        r = checked(client.get("/api/v1/watch", headers=headers, params=query), 200)
        size += len(r.content)
        for line in r.text.splitlines():
            item = json.loads(line) if line else None
            if item is None:
                continue
            if item["type"] == "CHANGE":
                changes.append(item)
            since = max(since, int(item["revision"]))
    return changes, size


def _all_jobs(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = checked(client.get("/api/v1/jobs", headers=headers, params=params), 200).json()
        items += page["items"]
        if not page.get("continue"):
            return items
        params["continue"] = page["continue"]


def run(nodes: int, jobs: int, home: Path) -> dict[str, Any]:
    app = create_app(
        # no rate limits: this loop drives the cluster as fast as it can (what is counted is changes)
        Settings(home=home, database_url=f"sqlite:///{home / 'tessera.db'}", api_fairness=False),
        run_controllers=False,
    )
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {app.state.bootstrap_secret}"}
        db = app.state.db
        checked(client.post("/api/v1/users", headers=admin, json={"name": "agent"}), 201)
        body = {"name": "agent-node", "user": "agent", "scopes": ["node"]}
        secret = checked(client.post("/api/v1/tokens", headers=admin, json=body), 201).json()["secret"]
        agent = {"Authorization": f"Bearer {secret}"}
        names = []
        for n in range(nodes):
            names.append(
                checked(client.post("/api/v1/nodes", headers=agent, json=inventory(n, 8)), 200).json()["name"]
            )
        for j in range(jobs):
            job_body = {"name": f"w{j}", "groups": [{"command": ["true"], "resources": {"gpus": 1}}]}
            checked(client.post("/api/v1/jobs", headers=admin, json=job_body), 201)
        loop = SchedulingLoop(db)
        done, moved = 0, 0
        placed_on: dict[str, set[str]] = {n: set() for n in names}
        while done < jobs:
            loop.step()
            page = _all_jobs(client, admin)
            for listed in page:
                if listed["status"]["state"] not in ("SCHEDULED", "RUNNING"):
                    continue
                # a listed job has no tasks (lists are summaries): read the whole job
                job = checked(client.get(f"/api/v1/jobs/{listed['name']}", headers=admin), 200).json()
                task, attempt = job["tasks"][0], job["status"]["attempt"]
                report = {"task_id": task["id"], "attempt": attempt, "state": "RUNNING"}
                if job["status"]["state"] == "SCHEDULED":
                    placed_on[task["node"]].add(job["name"])
                elif int(job["name"][1:]) % 10 == 0 and attempt == 0:
                    # every tenth job is preempted once: its next attempt may land on another node
                    with db.write() as tx:
                        evict_job(tx, uuid.UUID(job["id"]), job["version"], "Preempted", "bench")
                    moved += 1
                    continue
                else:
                    report.update(state="SUCCEEDED", exit_code=0)
                url = f"/api/v1/nodes/{task['node']}/reports"
                checked(client.post(url, headers=agent, json={"reports": [report]}), 200)
            done = sum(1 for j in page if j["status"]["state"] == "SUCCEEDED")
        everything, all_bytes = _watch(client, admin)
        per_node = []
        for name in names:
            mine, size = _watch(client, admin, node=name)
            seen = {c["object"]["name"] for c in mine if c["object"]}
            per_node.append((len(mine), size, placed_on[name] <= seen))
    return {
        "nodes": nodes,
        "jobs": jobs,
        "preempted": moved,
        "changes": len(everything),
        "bytes": all_bytes,
        "filtered_mean": statistics.mean(c for c, _, _ in per_node),
        "filtered_max": max(c for c, _, _ in per_node),
        "filtered_bytes_mean": statistics.mean(b for _, b, _ in per_node),
        "covered": all(ok for _, _, ok in per_node),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watchfilter", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=16, help="simulated nodes, 8 GPUs each (default 16)")
    parser.add_argument("--jobs", type=int, default=800, help="one-GPU jobs run to the end (default 800)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.jobs < 1:
        parser.error("--nodes and --jobs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tessera-watchfilter-") as tmp:
        r = run(args.nodes, args.jobs, Path(tmp))
    print(
        "| nodes | jobs | preempted | job changes | per agent, unfiltered "
        "| per agent, node filter (mean / max) | bytes per agent, unfiltered "
        "| bytes per agent, filtered (mean) | each node saw all its jobs |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    print(
        f"| {r['nodes']} | {r['jobs']} | {r['preempted']} | {r['changes']} | {r['changes']} "
        f"| {r['filtered_mean']:.0f} / {r['filtered_max']} | {r['bytes']:,} "
        f"| {r['filtered_bytes_mean']:,.0f} "
        f"| {'yes' if r['covered'] else 'NO'} |"
    )
    return 0 if r["covered"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
