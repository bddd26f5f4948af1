"""The agent's Kubernetes mode against the real control plane app: a running pod's slice is enforced
by its cgroup, a slice over its memory has every process of the pod signalled, and the job fails
with SliceOOM. Pods come from a list standing in for the informer (the API server is in
tests/kube/test_node_agent.py); the simulated GPU stands in for the device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.api.jobs import TaskState
from tessera.gpushare.cgroups import read_cgroup
from tessera.gpushare.enforce import EnforcerConfig
from tessera.gpushare.simulated import SimulatedBackend
from tessera.kube import names
from tessera.kube.client import Obj
from tessera.node.agent import AgentConfig
from tessera.node.enforcement import NO_SHIM
from tessera.node.feed import AssignmentFeed
from tessera.node.inventory import detect
from tessera.node.kube import KubeAgent, KubeOptions, pod_key
from tessera.platform.controllers.scheduling import SchedulingLoop
from tests.conftest import Api, job_body

NODE = "n1"
GPU = f"SIM-{NODE}-0"
# the pod's main process: not on the GPU itself, so only a signal to the whole pod reaches it
MAIN = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
HOLD = """
import sys, time
from tessera.gpushare.simhelper import SimGpu
SimGpu.from_env().allocate(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(120)
"""


class Pods:
    """The pods bound to this node, as the agent's informer would hold them."""

    def __init__(self) -> None:
        self.items: list[Obj] = []

    def start(self) -> Pods:
        return self

    def stop(self) -> None:
        pass

    def snapshot(self) -> list[Obj]:
        return list(self.items)


def pod(task_id: str, attempt: int, uid: str, node: str = NODE, phase: str = "Running") -> Obj:
    labels = {names.TASK: task_id, names.ATTEMPT: str(attempt)}
    return {
        "metadata": {"name": f"p-{uid}", "namespace": "ns", "uid": uid, "labels": labels},
        "spec": {"nodeName": node},
        "status": {"phase": phase},
    }


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend("1xA100-80GB", state_dir=tmp_path / "sim", node=NODE)


@pytest.fixture
def agent(api: Api, sim: SimulatedBackend, tmp_path: Path) -> Iterator[KubeAgent]:
    token = api.user(f"agent-{NODE}", role=None, scopes=["node"])
    config = AgentConfig(
        name=NODE,
        state_dir=tmp_path / "state",
        url="http://testserver",
        token=token,
        inventory=detect(sim),
        device=sim,
        enforcement=EnforcerConfig(memory_grace_seconds=2),
    )
    options = KubeOptions(
        cache_dir=tmp_path / "cache", device_plugin_dir=tmp_path / "dp", cgroup_root=tmp_path / "cgroup"
    )
    found: dict[str, str] = {}
    a = KubeAgent(config, options, None, pods=Pods(), find_cgroup=found.get)
    a.cgroups_found = found  # type: ignore[attr-defined]  # the test's stand-in for the cgroup tree
    api.client.headers["Authorization"] = f"Bearer {token}"
    a.http.close()
    a.http = api.client  # the real app, in process
    a.lock()
    a.feed = AssignmentFeed(a.http, NODE, a.state_dir / "assignments.json", a.changed)
    a.data = a._open_data()
    a._register()
    yield a
    a.enforcement.close()
    a.data.cache.close()


def running_job(api: Api, name: str, gpu_memory: str = "4Gi") -> dict[str, Any]:
    """A job bound to the node and RUNNING, as the Kubernetes backend reports a running pod."""
    r = api.call("POST", "/api/v1/jobs", json=job_body(name, gpu_memory=gpu_memory))
    assert r.status_code == 201, r.text
    SchedulingLoop(api.db).step()
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    assert job["status"]["state"] == "SCHEDULED" and job["tasks"][0]["node"] == NODE
    from tessera.api.jobs import TaskReport
    from tessera.platform.services.execution import apply_reports

    task = job["tasks"][0]
    apply_reports(api.db, NODE, [TaskReport(task_id=task["id"], attempt=0, state=TaskState.RUNNING)])
    job = api.call("GET", f"/api/v1/jobs/{name}").json()
    assert job["status"]["state"] == "RUNNING", job["status"]
    return dict(job)


def test_pods_of_this_node_name_their_task_attempts() -> None:
    task = str(uuid.uuid4())
    assert pod_key(pod(task, 2, "u")) == f"{task}-a2"
    assert pod_key({"metadata": {"labels": {names.TASK: "not-a-uuid", names.ATTEMPT: "0"}}}) is None
    assert pod_key({"metadata": {"labels": {names.TASK: task}}}) is None


def test_the_dataset_cache_is_where_pods_mount_it_without_a_memory_tier(agent: KubeAgent) -> None:
    assert agent.data is not None
    assert agent.data.cache.dataset_dir("d1") == agent.options.cache_dir / "data" / "d1"
    assert agent.data.cache.memory_root is None  # its links would point into the agent's own /dev/shm


def test_a_pod_over_its_slice_is_stopped_whole_and_its_job_fails_with_slice_oom(
    api: Api, agent: KubeAgent, sim: SimulatedBackend, tmp_path: Path
) -> None:
    job = running_job(api, "greedy")
    task = job["tasks"][0]
    assert agent.feed is not None
    agent.feed.relist()
    # the pod: a main process and its child, which takes 6 GiB of a 4 GiB slice
    env = {**os.environ, **sim.workload_env(), "CUDA_VISIBLE_DEVICES": GPU, "TESSERA_SLICE_ID": "other"}
    main = subprocess.Popen(
        [sys.executable, "-c", MAIN, sys.executable, "-c", HOLD, "6144"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert main.stdout is not None and main.stdout.readline() == "ready\n"
        # the pod's cgroup: the test's own stands in for it (a fake tree lists the pod's processes,
        # so the stop path signals those and nothing else of this cgroup)
        cgroup = read_cgroup(main.pid)
        assert cgroup is not None
        if cgroup == "/":
            pytest.skip("this process is in the root cgroup: no cgroup to stand in for a pod's")
        children = Path(f"/proc/{main.pid}/task/{main.pid}/children").read_text().split()
        procs = tmp_path / "cgroup" / cgroup.strip("/") / "task"
        procs.mkdir(parents=True)
        (procs / "cgroup.procs").write_text("\n".join([str(main.pid), *children]) + "\n")
        uid = str(uuid.uuid4())
        agent.cgroups_found[uid] = cgroup  # type: ignore[attr-defined]
        pods: Pods = agent.pods  # type: ignore[assignment]
        pods.items = [
            pod(task["id"], 0, uid),
            pod(str(uuid.uuid4()), 0, "elsewhere", node="n2"),  # not this node's: ignored
            pod(task["id"], 0, "done", phase="Succeeded"),
        ]
        assert agent.running_pods() == {f"{task['id']}-a0": uid}

        agent.reconcile()
        ((spec, context),) = agent.enforcement.slices()
        assert (spec.cgroup, spec.shim, spec.task) == (cgroup, NO_SHIM, None)
        assert spec.gpu_uuid == GPU and spec.memory_mib == 4096 and context.job.name == "greedy"
        agent.enforcement.enforcer.poll([spec])  # the watchdog: over its memory, SIGTERM to the pod
        assert main.wait(10) == -signal.SIGTERM  # the main process too: the whole pod was signalled
        agent.reconcile()  # the report: FAILED, SliceOOM
        done = api.call("GET", "/api/v1/jobs/greedy").json()
        assert (done["status"]["state"], done["status"]["reason"]) == ("FAILED", "SliceOOM"), done["status"]
        assert f"used 6144 MiB of its 4096 MiB slice on {GPU}" in done["status"]["message"]
        assert f"{task['id']}-a0" in agent.final
        events = api.call("GET", f"/api/v1/jobs/{job['id']}/events").json()
        assert "SliceMemoryExceeded" in {e["reason"] for e in events}
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
        main.wait()
    # the job is gone from the node's assignments once it ended: nothing is left to enforce
    deadline = time.monotonic() + 5
    while agent.enforcement.slices() and time.monotonic() < deadline:
        agent.feed.relist()
        agent.reconcile()
    assert not agent.enforcement.slices()


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (
            ["--kubernetes"],
            {"TESSERA_HOME": "/tmp/x"},
            "--name is needed (or $TESSERA_NODE_NAME, $NODE_NAME)",
        ),
        (["--kubernetes"], {"NODE_NAME": "n1"}, "--state-dir is needed (or $TESSERA_HOME)"),
        (["--kubernetes"], {"NODE_NAME": "N_1", "TESSERA_HOME": "/tmp/x"}, "--name 'N_1' is not"),
        (["--name", "n1"], {"TESSERA_HOME": "/tmp/x"}, "--state-dir is needed"),
    ],
    ids=["no-name", "no-home", "bad-name", "local-needs-state-dir"],
)
def test_the_node_command_takes_the_daemonsets_environment(
    argv: list[str], env: dict[str, str], error: str
) -> None:
    from typer.testing import CliRunner

    from tessera.cli.main import app

    clean = {k: None for k in ("TESSERA_NODE_NAME", "NODE_NAME", "TESSERA_HOME", "TESSERA_TOKEN")}
    result = CliRunner().invoke(app, ["node", *argv], env={**clean, **env})
    assert result.exit_code == 2 and error in result.output, result.output
