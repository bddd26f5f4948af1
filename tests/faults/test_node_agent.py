"""The node agent killed (SIGKILL): its tasks keep running under their shims and a restarted agent
re-adopts them; killed for longer than the heartbeat timeout, its node turns NotReady and its jobs
follow their retry policy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.faults.harness import (
    Agent,
    FaultCluster,
    _exists,
    record,
    submit,
    task_pids,
    wait_until,
)


def test_agent_kill9_tasks_keep_running_and_are_readopted(cluster: FaultCluster) -> None:
    state_dir = cluster.home / "node"
    # one task ends while its agent is dead (its exit must still be reported), one after the restart
    quick = submit(cluster, "quick", ["sh", "-c", "sleep 3; echo quick; exit 3"], gpus=0.5)
    steady = submit(cluster, "steady", ["sh", "-c", "sleep 8; echo steady"], gpus=0.5)
    for name in ("quick", "steady"):
        cluster.wait_state(name, "RUNNING")
    pids = {job: task_pids(state_dir, job) for job in (quick, steady)}
    assert all(len(p) == 1 for p in pids.values()), pids
    name = cluster.node_name()
    old = cluster.agent_pid()
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not _exists(old), 10, what="the agent to die")
    # its tasks are not its children: they keep running without it
    assert all(_exists(p[0]) for p in pids.values()), "a task died with its agent"
    wait_until(lambda: not _exists(pids[quick][0]), 30, what="the quick task to end on its own")
    assert cluster.job("quick")["status"]["state"] == "RUNNING"  # nobody could report it yet
    agent = Agent(cluster, name, state_dir, gpus=cluster.gpus).start()
    try:
        quick_job = cluster.wait_state("quick", "FAILED", timeout=60)
        readopted = time.monotonic() - killed
        assert quick_job["status"]["reason"] == "Error" and quick_job["tasks"][0]["exit_code"] == 3
        assert _exists(pids[steady][0]), "the re-adopted task was restarted or killed"
        steady_job = cluster.wait_state("steady", "SUCCEEDED", timeout=60)
        assert steady_job["tasks"][0]["exit_code"] == 0
        assert steady_job["status"]["attempt"] == 0  # the same run, not a second one
        assert cluster.agent_pid() == agent.process.pid != old  # type: ignore[union-attr]
        assert "steady" in cluster.cli("logs", "steady").stdout
        assert "quick" in cluster.cli("logs", "quick").stdout
        cluster.assert_consistent()
        record(
            "node agent kill -9 (re-adopt)",
            tasks=2,
            survived=2,
            exit_codes_reported=[3, 0],
            killed_to_first_report_s=round(readopted, 1),
        )
    finally:
        agent.stop()


def test_agent_dead_past_heartbeat_timeout_node_lost_and_retry_policy(tmp_path: Path) -> None:
    cluster = FaultCluster(home=tmp_path / "home", env_extra={"TESSERA_NODE_HEARTBEAT_TIMEOUT": "3"})
    cluster.start()
    # agents of this test's own, heartbeating well within the timeout (`tessera up`'s beats every
    # 5 s, so its node may flap: the jobs here keep off it with a selector)
    pool: dict[str, Any] = {"node_selector": {"pool": "faults"}}
    victim = Agent(cluster, "victim", tmp_path / "victim", labels=("pool=faults",))
    spare = Agent(cluster, "spare", tmp_path / "spare", labels=("pool=faults",))
    revived: Agent | None = None
    try:
        victim.start()
        wait_until(lambda: _ready(cluster, "victim"), 60, what="node victim")
        once = submit(cluster, "once", ["sleep", "300"], gpus=0.5, **pool)
        # attempt 0 blocks; the retry (attempt 1) finishes at once, wherever it runs
        retried = submit(
            cluster,
            "retried",
            [
                "sh",
                "-c",
                'test "$TESSERA_ATTEMPT" = 0 && sleep 300; echo "attempt $TESSERA_ATTEMPT on $TESSERA_NODE"',
            ],
            gpus=0.5,
            retries=1,
            **pool,
        )
        for job in ("once", "retried"):
            assert cluster.wait_state(job, "RUNNING")["tasks"][0]["node"] == "victim"
        orphans = task_pids(victim.state_dir, once) + task_pids(victim.state_dir, retried)
        assert len(orphans) == 2, orphans
        spare.start()  # a second node, for the retry to run on while the first is gone
        wait_until(lambda: _ready(cluster, "spare"), 60, what="node spare")
        victim.kill9()
        killed = time.monotonic()
        wait_until(lambda: not _ready(cluster, "victim"), 60, what="victim NotReady")
        not_ready = time.monotonic() - killed
        assert cluster.node("victim")["state"] == "NotReady"  # type: ignore[index]
        failed = cluster.wait_state("once", "FAILED", timeout=30)
        assert failed["status"]["reason"] == "NodeLost", failed["status"]
        done = cluster.wait_state("retried", "SUCCEEDED", timeout=60)
        assert done["status"]["attempt"] == 1 and done["tasks"][0]["node"] == "spare"
        assert [a["number"] for a in done["attempts"]] == [0, 1]
        assert done["attempts"][0]["reason"] == "NodeLost"
        assert "attempt 1 on spare" in cluster.cli("logs", "retried").stdout
        # the lost node's tasks kept running without their agent; when it returns it stops them
        assert all(_exists(pid) for pid in orphans), "tasks died with their agent"
        revived = Agent(cluster, "victim", victim.state_dir, labels=("pool=faults",)).start()
        wait_until(lambda: _ready(cluster, "victim"), 60, what="victim back")
        wait_until(lambda: not any(_exists(pid) for pid in orphans), 60, what="orphaned tasks stopped")
        assert cluster.job("once")["status"]["state"] == "FAILED"  # a late report changes nothing
        cluster.assert_consistent()
        record(
            "node agent dead past the heartbeat timeout (3 s)",
            killed_to_not_ready_s=round(not_ready, 1),
            no_retries="FAILED NodeLost",
            one_retry="SUCCEEDED on the spare node, attempt 1",
            orphans_stopped_on_return=len(orphans),
        )
    finally:
        for a in (revived, spare, victim):
            if a is not None:
                a.stop()
        cluster.stop()


def _ready(cluster: FaultCluster, name: str) -> bool:
    return (cluster.node(name) or {}).get("state") == "Ready"
