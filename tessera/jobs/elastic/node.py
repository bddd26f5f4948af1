"""One slice of an elastic job: a node of the job's own Ray cluster.

    python -m tessera.jobs.elastic        (what every task of an elastic job runs)

Rank 0 (``TESSERA_ELASTIC_ROLE=head``) starts the Ray head on ``MASTER_ADDR:
MASTER_PORT`` and then the driver (driver.py); the task ends with the driver,
and the job with it. Every other rank joins the head as one Ray node offering
one ``tessera_slice`` (and its GPU, if the slice has one) and stays until
stopped. Stopped with SIGTERM, a worker node first drains itself in Ray as a
preemption with a deadline, so Ray Train counts the lost worker against its
preemption budget rather than the job's failure budget; then it stops its
raylet. The head, stopped, interrupts the driver (Ray Train aborts the run
cleanly) before it stops.

Each node has its own short temp dir (Ray's socket paths are limited in
length) and its own ports, so several jobs' clusters share one machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from tessera.api.jobs import ElasticSpec

log = logging.getLogger("tessera.elastic")
SLICE_RESOURCE = "tessera_slice"
HEAD_WAIT_S = 60.0
# How long a reclaimed node gives Ray Train: Train stops the node's worker at the deadline and counts
# a node that dies after it as preempted (before it: as a failure). Inside the agent's stop grace.
DRAIN_DEADLINE_S = 5.0
# a stopped task has the agent's grace (10 s) before SIGKILL: the driver gets 5 s to abort the run,
# then the raylet 3 s to stop
DRIVER_STOP_S = 5.0
RAY_STOP_S = 3.0
OBJECT_STORE_MIN = 100 * 1024 * 1024
SIMULATED_ENV = "TESSERA_SIM_DEVICE_DIR"  # set on tasks of a simulated device (gpushare.simhelper)


def real_gpus() -> list[str]:
    """The slice's GPUs, unless they are simulated (then Ray sees none and training uses the CPU)."""
    if os.environ.get(SIMULATED_ENV):
        return []
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]


def ray_binary() -> str:
    """The `ray` CLI of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed here: pip install 'tessera[ray]'")
    return found


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def temp_dir(job_id: str, attempt: str, index: str) -> Path:
    """A short, private temp dir for this node (Ray puts its sockets there)."""
    root = Path(os.environ.get("TESSERA_RAY_TMP", tempfile.gettempdir())) / "tray"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{job_id[:8]}-{attempt}-{index}"
    path.mkdir(exist_ok=True)
    return path


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    # the job's cluster admits only processes that present its token (one per attempt, from the
    # control plane, to every task of the job); without one (an old control plane) auth is off
    env["RAY_AUTH_MODE"] = "token" if env.get("RAY_AUTH_TOKEN") else "disabled"
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # SIGTERM stops a node at once: a worker drains itself first (drain_self), and a head
    # otherwise waits out its detached actors for ~40 s
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    return env


def start_command(head: bool, host: str, port: int, tmp: Path) -> list[str]:
    cpus = max(1, math.ceil(float(os.environ.get("TESSERA_TASK_CPUS", "1"))))
    gpus = real_gpus()
    # the object store is shared memory out of the slice's host memory: a share, not Ray's 30% of RAM
    memory_mib = int(os.environ.get("TESSERA_TASK_MEMORY_MIB", "1024"))
    store = max(OBJECT_STORE_MIN, memory_mib * 1024 * 1024 * 3 // 10)
    argv = [
        ray_binary(),
        "start",
        "--block",
        "--disable-usage-stats",
        f"--num-cpus={cpus}",
        f"--num-gpus={len(gpus)}",
        f"--resources={json.dumps({SLICE_RESOURCE: 1})}",
        f"--object-store-memory={store}",
        f"--dashboard-agent-listen-port={free_port('')}",
        f"--metrics-export-port={free_port('')}",
    ]
    if head:
        argv += [
            "--head",
            f"--port={port}",
            f"--node-ip-address={host}",  # the head is on this node: MASTER_ADDR is this node's
            f"--temp-dir={tmp}",
            "--include-dashboard=false",
            "--no-monitor",  # no autoscaler: Tessera grants the nodes
        ]
        if _ray_client_installed():  # else Ray would take the fixed port 10001 for it
            argv.append(f"--ray-client-server-port={free_port('')}")
    else:
        argv += [f"--address={host}:{port}", f"--temp-dir={tmp}"]
    return argv


def _ray_client_installed() -> bool:
    try:
        from ray._private.utils import get_ray_client_dependency_error

        return get_ray_client_dependency_error() is None
    except Exception:
        return False


def _wait_for(host: str, port: int, until: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether ``host:port`` accepts a connection before ``until`` (and before ``proc`` exits)."""
    while time.monotonic() < until and (proc is None or proc.poll() is None):
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes], grace: float = RAY_STOP_S) -> int:
    """Stop a process group we started: SIGTERM, then SIGKILL after ``grace``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return proc.returncode


def drain_self(address: str, tmp: Path, deadline_s: float) -> bool:
    """Tell Ray this node is being preempted (with a deadline), so Ray Train treats it so."""
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.core.generated import autoscaler_pb2

        gcs = GcsClient(address=address)
        nodes = gcs.get_all_node_info(timeout=5)
        mine = [
            info.node_id.hex()
            for info in nodes.values()
            if info.state == 0 and info.temp_dir == str(tmp)  # ALIVE, and this node's own temp dir
        ]
        if not mine:
            log.warning("cannot find this node in the job's Ray cluster; stopping without a drain")
            return False
        deadline_ms = int((time.time() + deadline_s) * 1000)
        for node_id in mine:
            accepted, why = gcs.drain_node(
                node_id,
                autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),  # type: ignore[attr-defined]
                "reclaimed by Tessera for another job",
                deadline_ms,
            )
            if not accepted:
                log.warning("Ray refused to drain this node: %s", why)
                return False
        return True
    except Exception:
        log.exception("draining this node failed; stopping without a drain")
        return False


class Node:
    """This slice's Ray node (and, on rank 0, the driver)."""

    def __init__(self) -> None:
        self.spec = ElasticSpec.model_validate_json(os.environ["TESSERA_ELASTIC"])
        self.head = os.environ.get("TESSERA_ELASTIC_ROLE") == "head"
        self.host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.port = int(os.environ["MASTER_PORT"])
        self.tmp = temp_dir(
            os.environ.get("TESSERA_JOB_ID", "job"),
            os.environ.get("TESSERA_ATTEMPT", "0"),
            os.environ.get("TESSERA_TASK_INDEX", "0"),
        )
        self.stopping = threading.Event()
        self.ray: subprocess.Popen[bytes] | None = None
        self.driver: subprocess.Popen[bytes] | None = None

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def run(self) -> int:
        # this process talks to the cluster too (drain_self): the same auth as its Ray processes
        os.environ["RAY_AUTH_MODE"] = "token" if os.environ.get("RAY_AUTH_TOKEN") else "disabled"
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(signal.SIGINT, self.on_sigterm)
        env = ray_env()
        argv = start_command(self.head, self.host, self.port, self.tmp)
        log.info("starting Ray %s: %s", "head" if self.head else "worker node", " ".join(argv))
        self.ray = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            return self._head(env) if self.head else self._worker()
        finally:
            _stop(self.ray)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _head(self, env: dict[str, str]) -> int:
        assert self.ray is not None
        if not _wait_for(self.host, self.port, time.monotonic() + HEAD_WAIT_S, self.ray):
            log.error("the Ray head did not come up on %s:%s", self.host, self.port)
            return 1
        env["TESSERA_RAY_ADDRESS"] = f"{self.host}:{self.port}"
        self.driver = subprocess.Popen(
            [sys.executable, "-m", "tessera.jobs.elastic.driver"], env=env, start_new_session=True
        )
        while self.driver.poll() is None:
            if self.stopping.wait(0.5):
                log.info("stopping: interrupting the driver")
                try:
                    os.killpg(self.driver.pid, signal.SIGINT)  # Ray Train aborts the run on SIGINT
                except ProcessLookupError:
                    pass
                try:
                    self.driver.wait(DRIVER_STOP_S)
                except subprocess.TimeoutExpired:
                    _stop(self.driver, 2)
                return 143
            if self.ray.poll() is not None:
                log.error("the Ray head exited (code %s) under the driver", self.ray.returncode)
                _stop(self.driver, 2)
                return 1
        return self.driver.returncode

    def _worker(self) -> int:
        assert self.ray is not None
        while self.ray.poll() is None:
            if self.stopping.wait(0.5):
                deadline = time.monotonic() + DRAIN_DEADLINE_S
                if drain_self(f"{self.host}:{self.port}", self.tmp, DRAIN_DEADLINE_S):
                    log.info("drained as a preemption: Ray Train stops this node's worker by the deadline")
                    # stopped after the deadline, the node counts as preempted; a drained node
                    # whose worker has gone often stops by itself just after it
                    while time.monotonic() < deadline + 1.0 and self.ray.poll() is None:
                        time.sleep(0.1)
                _stop(self.ray)
                return 0
        # the node ended by itself: the head went away (the job ended, or its head failed: either
        # way the head's task says so), or this node failed (a failure of the job's)
        if not _wait_for(self.host, self.port, time.monotonic() + 2):
            log.info("the job's Ray head is gone; this node's work is over")
            return 0
        log.error("this Ray node exited (code %s) while the head is up", self.ray.returncode)
        return self.ray.returncode or 1


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tessera-elastic %(message)s")
    return Node().run()
