"""A node's watch (``/api/v1/watch?node=``): the job changes that concern the node, no others.

A node agent follows the jobs placed on its node. Filtering on the control plane's side keeps
its traffic in proportion to its own jobs, not the cluster's; a job that leaves the node must
still reach it (its change is tagged with where the job was as well as where it is).
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from tessera.node.feed import AssignmentFeed
from tessera.platform.controllers.nodes import reconcile_nodes
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.store.rows import NodeRow
from tessera.platform.store.types import utcnow
from tests.conftest import Api, job_body
from tests.platform.test_execution import node, report


def changes(api: Api, since: int, **params: Any) -> list[tuple[str, str]]:
    """(job name, state) of each job change after ``since``; a deletion's state is "deleted"."""
    r = api.call("GET", "/api/v1/watch", params={"since": since, "kind": "job", "timeout": 0.5, **params})
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    return [
        (c["object"]["name"], "deleted" if c["op"] == "delete" else c["object"]["status"]["state"])
        for c in lines
        if c["type"] == "CHANGE"
    ]


def test_a_nodes_watch_sees_its_jobs_arrive_and_leave(api: Api, tmp_path: Path) -> None:
    since = api.call("GET", "/api/v1/jobs").json()["revision"]
    # submitted before any node exists (then it is not refused as fitting none): never placed
    assert api.call("POST", "/api/v1/jobs", json=job_body("waits", gpus=4)).status_code == 201
    n1 = node(api, "n1")
    body = {**job_body("mover", gpus=1), "retry": {"max_retries": 1}}
    assert api.call("POST", "/api/v1/jobs", json=body).status_code == 201
    SchedulingLoop(api.db).step()
    mover = api.call("GET", "/api/v1/jobs/mover").json()
    assert mover["tasks"][0]["node"] == "n1"
    report(api, n1, mover, state="RUNNING")
    node(api, "n2")
    # n1 falls silent: the running job is retried, and its next attempt is bound to n2
    with api.db.write() as tx:
        old = utcnow() - timedelta(minutes=5)
        tx.session.execute(update(NodeRow).where(NodeRow.name == "n1").values(last_heartbeat_at=old))
    assert reconcile_nodes(api.db, timedelta(seconds=40)) == ["n1"]
    SchedulingLoop(api.db).step()
    moved = api.call("GET", "/api/v1/jobs/mover").json()
    assert moved["tasks"][0]["node"] == "n2" and moved["status"]["attempt"] == 1
    api.call("POST", "/api/v1/jobs/mover/cancel")
    assert api.call("DELETE", "/api/v1/jobs/mover").status_code == 204

    everything = changes(api, since)
    on_n1 = changes(api, since, node="n1")
    on_n2 = changes(api, since, node="n2")
    assert ("waits", "PENDING") in everything
    # n1 hears of the job from its bind there to its bind on n2 (where it left n1), no further
    assert on_n1[0] == ("mover", "SCHEDULED")
    assert ("mover", "RUNNING") in on_n1 and on_n1[-1] == ("mover", "SCHEDULED")
    assert len(on_n1) < len(everything)
    # n2 hears of it from its bind there, through its end and deletion
    assert on_n2[0] == ("mover", "SCHEDULED")
    assert on_n2[-2:] == [("mover", "CANCELLED"), ("mover", "deleted")]
    # neither node hears of a job that was never placed on it
    assert all(name != "waits" for name, _ in on_n1 + on_n2)
    # n1's agent, fed its watch, held the job while it was there and forgot it once it left
    feed = AssignmentFeed(httpx.Client(), "n1", tmp_path / "assignments.json", threading.Event())
    r = api.call("GET", "/api/v1/watch", params={"since": since, "kind": "job", "node": "n1", "timeout": 0.5})
    held = []
    for line in r.text.splitlines():
        feed._apply(json.loads(line))
        held.append(sorted(j.name for j in feed.jobs.values()))
    assert ["mover"] in held and held[-1] == []
    # a node with nothing placed on it hears of no job change at all
    node(api, "idle")
    assert changes(api, since, node="idle") == []


def test_a_nodes_watch_names_a_node(api: Api) -> None:
    r = api.call("GET", "/api/v1/watch", params={"since": 0, "node": "Not A Name%", "timeout": 0.5})
    assert r.status_code == 422 and "node" in r.text and "DNS label" in r.text


def test_the_migration_records_where_existing_jobs_are(api: Api) -> None:
    from sqlalchemy import select

    from tessera.platform.store import migrate
    from tessera.platform.store.rows import JobRow

    api.call("POST", "/api/v1/jobs", json=job_body("unplaced", gpus=4))  # before any node: taken
    node(api, "n1")
    api.call("POST", "/api/v1/jobs", json=job_body("placed", gpus=1))
    SchedulingLoop(api.db).step()
    # back to before jobs knew where they are, then forward again: the upgrade fills it in
    migrate.downgrade(api.db.engine, "0008")
    migrate.upgrade(api.db.engine)
    with api.db.read() as session:
        placed = {name: where for name, where in session.execute(select(JobRow.name, JobRow.placed_nodes))}
    assert placed == {"placed": "n1", "unplaced": None}


def test_the_watch_bench_runs_small(tmp_path: Path) -> None:
    from bench.watchfilter import run

    result = run(nodes=3, jobs=20, home=tmp_path)
    assert result["covered"] and result["preempted"] == 2
    # each of 3 agents hears of fewer changes than the cluster made
    assert 0 < result["filtered_max"] < result["changes"]
