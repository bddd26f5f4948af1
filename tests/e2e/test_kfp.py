"""The Kubeflow Pipelines step: the sample pipeline compiles to IR YAML offline; the component runs
for real through kfp's local runner against `tessera up`; a retried step re-attaches to its job; a
terminated step cancels it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import ROOT, LocalCluster, wait_until

kfp = pytest.importorskip("kfp")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(home=Path(tmp_path_factory.mktemp("kfp")) / "home").start()
    yield c
    c.stop()


def state(cluster: LocalCluster, name: str) -> str | None:
    r = cluster.api("GET", f"/api/v1/jobs/{name}")
    return str(r.json()["status"]["state"]) if r.status_code == 200 else None


def spec(name: str, *argv: str) -> dict[str, Any]:
    command = list(argv) or ["python", "examples/hello_train.py"]
    return {"name": name, "groups": [{"command": command, "resources": {"gpu_memory": "4Gi"}}]}


def test_the_sample_pipeline_compiles_to_ir_yaml(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    done = subprocess.run(
        [sys.executable, "examples/kfp_pipeline.py", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    ir = yaml.safe_load(out.read_text())
    assert ir["pipelineInfo"]["name"] == "tessera-train-and-evaluate"
    executors = ir["deploymentSpec"]["executors"]
    job = executors["exec-tessera-job"]["container"]
    assert job["image"] == "python:3.11-slim" and "tessera[kfp]" in " ".join(job["command"])
    cli = executors["exec-tessera-submit"]["container"]
    assert cli["command"] == ["tessera", "submit", "train"] and "--gpu-memory" in cli["args"]
    train = ir["root"]["dag"]["tasks"]["tessera-job"]
    params = train["inputs"]["parameters"]
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["job_spec"]["runtimeValue"]["constant"]["groups"][0]["resources"]["gpu_memory"] == "8Gi"
    assert train["retryPolicy"]["maxRetryCount"] == 2
    assert ir["root"]["dag"]["tasks"]["tessera-submit"]["dependentTasks"] == ["tessera-job"]


def test_the_component_runs_through_kfp_local_and_a_retry_reattaches(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    from kfp import local

    from tessera.kfp.steps import job_component

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    step = job_component(packages=[])  # this environment has Tessera already
    args = dict(
        job_spec=spec("kfp-hello"), run_id="run-1", step="train", url=cluster.url, token=cluster.token
    )
    first = step(**args)
    assert first.outputs["Output"] == "SUCCEEDED"
    job = cluster.job("kfp-hello")
    assert first.outputs["job_id"] == job["id"] and job["status"]["state"] == "SUCCEEDED"
    # the same step again (a retry): the same job, not a second one
    again = step(**args)
    assert again.outputs["job_id"] == job["id"]
    names = [j["name"] for j in cluster.api("GET", "/api/v1/jobs", params={"q": "kfp-hello"}).json()["items"]]
    assert names == ["kfp-hello"]
    # a failing job fails the step
    with pytest.raises(RuntimeError):
        step(**{**args, "job_spec": spec("kfp-fail", "python", "-c", "raise SystemExit(3)"), "step": "bad"})


def test_terminating_the_step_cancels_its_job(cluster: LocalCluster, tmp_path: Path) -> None:
    code = (
        "import sys; from tessera.kfp.steps import tessera_job; "
        f"tessera_job({spec('kfp-slow', 'sleep', '300')!r}, 'run-2', 'slow', sys.argv[1], "
        f"url={cluster.url!r}, token={cluster.token!r}, poll_seconds=0.5)"
    )
    step = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "job_id")],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: state(cluster, "kfp-slow") == "RUNNING", 90, what="the step's job RUNNING")
        assert (tmp_path / "job_id").read_text() == cluster.job("kfp-slow")["id"]  # recorded first
        step.send_signal(signal.SIGTERM)
        output, _ = step.communicate(timeout=60)
    finally:
        if step.poll() is None:
            step.kill()
    assert step.returncode == 128 + signal.SIGTERM, output
    assert "cancelled tessera job kfp-slow" in output
    assert cluster.wait_state("kfp-slow", "CANCELLED")["status"]["reason"] == "Cancelled"
