"""Elastic jobs on their own Ray cluster: start cost, and how fast they react, ours against Ray's defaults.

1. The per-job cluster: a Ray head and one worker node started with the flags Tessera uses
   (``tessera.jobs.elastic.node.start_command``), each in its own temp dir: seconds from launch to
   the node being listed alive by the head's GCS; then the idle RSS and PSS of each node's
   process tree.
2. One elastic job (``examples/elastic_train.py``, 1..2 one-GPU workers, CPU/gloo, a checkpoint
   every 5 steps) through a real single-machine Tessera with two simulated GPUs, twice: with
   Tessera's Ray settings, and with Ray's defaults (``TESSERA_RAY_DEFAULTS=1``: 60 s worker-group
   start timeout, 60 s resize monitor interval, Ray's own AutoscalingCoordinator refreshing every
   20 s, 2 s health checks, 5 s preemption polling). The same events are timed in both runs, all
   on this machine's clock:

   - grant -> use: from the ``Granted`` event (another job ended) to the first training report
     from a worker group of 2;
   - worker kill -> progress: from ``kill -9`` of a Ray Train worker to the first report after it;
   - reclaim -> progress: from the ``Reclaimed`` event (a new job needs the GPU) to the first
     report from a worker group of 1;
   - how Ray Train charged each failure (our events): a reclaim should be a preemption.

   Also the job's memory while training with 2 workers (PSS of every process under its tasks).

Run: ``.venv/bin/python -m bench.elastic [--skip-defaults]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.procstats import pss_kib, status_kib
from tessera.jobs.elastic import node as elastic_node
from tessera.node.procs import descendants
from tests.e2e.cluster import LocalCluster, wait_until
from tests.e2e.elastic import events, train_events, train_worker_pid

SLEEPER = [sys.executable, "-c", "import time; time.sleep(900)"]
EVERY = 5


def _tree_kib(root: int) -> tuple[int, int]:
    pids = [root, *descendants(root)]
    rss = sum(status_kib(p) or 0 for p in pids)
    pss = sum(pss_kib(p) or 0 for p in pids)
    return rss, pss


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cluster_start() -> dict[str, float]:
    """Start a head and one worker node the way elastic tasks do; time them and weigh them idle."""
    tmp = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))
    port = elastic_node.free_port()
    env = elastic_node.ray_env()
    os.environ.setdefault("TESSERA_TASK_MEMORY_MIB", "1024")
    head_dir, worker_dir = tmp / "h", tmp / "w"
    head_dir.mkdir()
    worker_dir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        head = subprocess.Popen(
            elastic_node.start_command(True, "127.0.0.1", port, head_dir),
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(head)
        assert elastic_node._wait_for("127.0.0.1", port, time.monotonic() + 120, head), "head did not start"
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        gcs = GcsClient(address=f"127.0.0.1:{port}")

        def alive(temp_dir: Path) -> bool:
            nodes = gcs.get_all_node_info(timeout=5).values()
            return any(n.state == 0 and n.temp_dir == str(temp_dir) for n in nodes)

        wait_until(lambda: alive(head_dir), 120, 0.1, "the head node to be alive")
        out["head_start_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        worker = subprocess.Popen(
            elastic_node.start_command(False, "127.0.0.1", port, worker_dir),
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(worker)
        wait_until(lambda: alive(worker_dir), 120, 0.1, "the worker node to join")
        out["worker_start_s"] = time.monotonic() - t1
        time.sleep(5)  # settle: Ray starts its helper processes lazily
        out["head_rss_mib"], out["head_pss_mib"] = (v / 1024 for v in _tree_kib(head.pid))
        out["worker_rss_mib"], out["worker_pss_mib"] = (v / 1024 for v in _tree_kib(worker.pid))
    finally:
        for proc in reversed(procs):
            _stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    mode: str
    figures: dict[str, float] = field(default_factory=dict)
    charged: list[str] = field(default_factory=list)


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()


def _first_report(cluster: LocalCluster, job: dict[str, Any], after: float, workers: int | None) -> float:
    def found() -> float | None:
        for e in train_events(cluster, job):
            if e.event == "report" and e.at > after and (workers is None or e.workers == workers):
                return e.at
        return None

    return float(wait_until(found, 300, 0.2, f"a report from {workers or 'any'} workers"))


def job_run(mode: str, root: Path) -> Run:
    run = Run(mode)
    env_flags = ["-e", "TESSERA_RAY_DEFAULTS=1"] if mode == "ray defaults" else []
    cluster = LocalCluster(home=root / mode.replace(" ", "-")).start()
    stop = root / f"stop-{mode.replace(' ', '-')}"
    try:
        cluster.submit("blocker", *SLEEPER, flags=("--gpus", "1"))
        cluster.wait_state("blocker", "RUNNING")
        r = cluster.cli(
            "submit", "etjob", "--name", "el", "--min-workers", "1", "--max-workers", "2", "--gpus", "1",
            "--entry", "examples/elastic_train.py", "--set", "steps=1000000", "--set", f"stop_file={stop}",
            "--set", f"checkpoint_every={EVERY}", "--set", "step_seconds=0.05", *env_flags, "-o", "json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)
        _first_report(cluster, job, 0, 1)

        assert cluster.cli("cancel", "blocker").returncode == 0
        granted = wait_until(
            lambda: next((e for e in events(cluster, job) if e["reason"] == "Granted"), None), 120
        )
        used = _first_report(cluster, job, _at(granted), 2)
        run.figures["grant_to_use_s"] = used - _at(granted)
        time.sleep(3)
        pids = [
            int(json.loads(p.read_text())["shim_pid"])
            for p in (cluster.home / "node").rglob(f"{job['id']}/*/state.json")
            if json.loads(p.read_text()).get("exit_code") is None
        ]
        pss = sum(_tree_kib(pid)[1] for pid in pids)
        run.figures["job_pss_2_workers_mib"] = pss / 1024

        victim = train_worker_pid(cluster, job)
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        run.figures["kill_to_progress_s"] = _first_report(cluster, job, killed, None) - killed

        cluster.submit("urgent", *SLEEPER, flags=("--gpus", "1"))
        reclaimed = wait_until(
            lambda: next((e for e in events(cluster, job) if e["reason"] == "Reclaimed"), None), 120
        )
        run.figures["reclaim_to_progress_s"] = _first_report(cluster, job, _at(reclaimed), 1) - _at(reclaimed)
        time.sleep(2)
        run.charged = [
            e["reason"]
            for e in events(cluster, job)
            if e["reason"] in ("WorkerFailed", "WorkerPreempted", "Restarting")
        ]
        stop.touch()
        cluster.wait_state("el", "SUCCEEDED", "FAILED", timeout=300)
    finally:
        cluster.stop()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-defaults", action="store_true", help="only Tessera's settings")
    args = parser.parse_args()
    start = cluster_start()
    print("\nPer-job Ray cluster (Tessera's flags), idle:\n")
    print("| node | start (s) | RSS (MiB) | PSS (MiB) |\n|---|---|---|---|")
    print(
        f"| head | {start['head_start_s']:.1f} | {start['head_rss_mib']:.0f} | {start['head_pss_mib']:.0f} |"
    )
    print(
        f"| worker node | {start['worker_start_s']:.1f} | {start['worker_rss_mib']:.0f} | "
        f"{start['worker_pss_mib']:.0f} |"
    )
    modes = ["tessera"] if args.skip_defaults else ["tessera", "ray defaults"]
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        runs = [job_run(mode, Path(tmp)) for mode in modes]
    print("\nOne elastic job (1..2 workers, CPU/gloo, checkpoint every 5 steps), same machine, same run:\n")
    print("| | " + " | ".join(r.mode for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for key, label in (
        ("grant_to_use_s", "slice granted -> first step with 2 workers (s)"),
        ("kill_to_progress_s", "worker kill -9 -> next step (s)"),
        ("reclaim_to_progress_s", "slice reclaimed -> first step with 1 worker (s)"),
        ("job_pss_2_workers_mib", "job memory with 2 workers, PSS (MiB)"),
    ):
        fmt = "{:.0f}" if key.endswith("mib") else "{:.1f}"
        print(f"| {label} | " + " | ".join(fmt.format(r.figures.get(key, float("nan"))) for r in runs) + " |")
    print("| failures as Ray Train charged them | " + " | ".join(", ".join(r.charged) for r in runs) + " |")


if __name__ == "__main__":
    main()
