"""The node agent: registers, heartbeats, runs its tasks through shims and reports them.

Tasks are never children of the agent: each runs under its own detached shim,
which records pid, start time and exit code in the task's directory. So the
agent can be killed and restarted at any time; on start it re-adopts every shim
it finds (pid + start time), reports what happened while it was away, and
continues. It also keeps working while the control plane is down, from its
cached assignments, and reports once it is back.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from tessera.api.cluster import NodeCondition, NodeInventory
from tessera.api.events import EventType
from tessera.api.usage import NodeEvent
from tessera.datacache.stream import stream_token
from tessera.gpushare.device import DeviceBackend
from tessera.gpushare.enforce import EnforcerConfig
from tessera.jobs.elastic import events as train_events
from tessera.jobs.launch import TaskLaunch, launches_for
from tessera.node import logs, shim
from tessera.node.datasets import DataManager
from tessera.node.enforcement import NodeEnforcement
from tessera.node.feed import AssignmentFeed
from tessera.node.launchenv import task_env
from tessera.node.logdisk import LogDisk
from tessera.node.procs import is_alive
from tessera.node.taskreport import FINAL, TaskDir, kill_orphan, task_report

log = logging.getLogger(__name__)
LAUNCH_TIMEOUT = 60.0  # seconds a task dir may lack a state file before it counts as a failed start
REPORT_BATCH = 500
MAX_MESSAGE = 1000
OUTBOX = 1000  # events kept while the control plane cannot be reached (oldest dropped first)


class AgentLocked(RuntimeError):
    """Another agent already runs with this node name and state dir."""


@dataclass
class AgentConfig:
    name: str
    state_dir: Path
    url: str
    token: str
    inventory: NodeInventory
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    grace_seconds: float = 10
    heartbeat_seconds: float = 5
    poll_seconds: float = 0.5
    labels: dict[str, str] = field(default_factory=dict)
    device: DeviceBackend | None = None
    enforcement: EnforcerConfig = field(default_factory=EnforcerConfig)
    cache_capacity_bytes: int | None = None  # the dataset cache's size (None: no limit of its own)
    advertise_host: str | None = None  # the host in the URL it registers (default: listen_host)
    log_dir: Path | None = None  # where task logs go, e.g. their own disk (default: the task dirs)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.jobs_dir = self.state_dir / "jobs"
        self.log_root = config.log_dir or self.jobs_dir
        self.log_disk = LogDisk(self.log_root)
        self._conditions: list[str] = []  # the condition types the control plane was last told
        self.stop_event = threading.Event()
        self.changed = threading.Event()
        self.secret = secrets.token_urlsafe(32)
        self.http = httpx.Client(
            base_url=config.url, timeout=15, headers={"Authorization": f"Bearer {config.token}"}
        )
        self.feed: AssignmentFeed | None = None
        self.reported: dict[str, tuple[str, int | None]] = {}
        self.stopping: set[str] = set()
        self.final: set[str] = set()  # attempts whose final report the control plane acknowledged
        self.launching: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="launch")
        self._lock_file: IO[str] | None = None
        self.url = ""
        self.outbox: deque[NodeEvent] = deque(maxlen=OUTBOX)
        self._outbox_lock = threading.Lock()
        self.data: DataManager | None = None  # the dataset cache, opened once the agent holds its lock
        self.enforcement = NodeEnforcement(
            config.name, config.device, self.state_dir, config.enforcement, self._event
        )

    # lifecycle -----------------------------------------------------------------------------

    def lock(self) -> None:
        """One agent per node name and state dir: an exclusive lock held for the process's life."""
        # task specs (env), assignments and output are private to the node's operator
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self.jobs_dir.mkdir(exist_ok=True, mode=0o700)
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = (self.state_dir / f"agent-{self.config.name}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AgentLocked(
                f"another agent for node {self.config.name!r} holds "
                f"{self.state_dir}/agent-{self.config.name}.lock"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT set ``stop_event``)."""
        self.lock()
        from tessera.node.server import serve_logs

        server, port = serve_logs(self, self.config.listen_host, self.config.listen_port)
        self.url = f"http://{self.config.advertise_host or self.config.listen_host}:{port}"
        self.feed = AssignmentFeed(
            self.http, self.config.name, self.state_dir / "assignments.json", self.changed
        )
        self.enforcement.start()
        self.data = data = self._open_data()
        threads = [
            threading.Thread(target=data.run, args=(self.stop_event,), name="datasets", daemon=True),
            threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True),
            threading.Thread(target=self.feed.run, args=(self.stop_event,), name="watch", daemon=True),
            threading.Thread(
                target=self.enforcement.run, args=(self.stop_event,), name="enforce", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            self._start_services()
            log.info("agent %s up; logs at %s; state in %s", self.config.name, self.url, self.state_dir)
            while not self.stop_event.is_set():
                try:
                    self.reconcile()
                except Exception:  # keep supervising whatever happens in one pass
                    log.exception("reconcile pass failed")
                self.changed.wait(self.config.poll_seconds)
                self.changed.clear()
        finally:
            self._stop_services()
            self.enforcement.close()  # nothing this agent stopped stays stopped
            server.should_exit = True
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._flush_events()
            self.http.close()

    def _open_data(self) -> DataManager:
        return DataManager(
            self.http, self.config.name, self.state_dir / "cache", self.config.cache_capacity_bytes
        )

    def _start_services(self) -> None:
        """What a mode adds once the agent holds its lock (Kubernetes: the device plugin)."""

    def _stop_services(self) -> None:
        """Undo `_start_services`."""

    def _heartbeats(self) -> None:
        registered = False
        while not self.stop_event.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
                r = self.http.post(f"/api/v1/nodes/{self.config.name}/heartbeat", json=self._usage())
                if r.status_code == 404:
                    registered = False
                    continue
                r.raise_for_status()
                if self._condition_types() != self._conditions:
                    self._register(resend=False)  # a condition came or went: say so now
            except httpx.HTTPError as exc:
                log.info("heartbeat failed: %s", exc)
                registered = registered and not isinstance(exc, httpx.HTTPStatusError)
            self.stop_event.wait(self.config.heartbeat_seconds if registered else 1)

    def _usage(self) -> dict[str, Any]:
        """The heartbeat's body: the latest measurement, or none if it cannot be had (never fatal)."""
        try:
            return {"usage": self.enforcement.usage().model_dump(mode="json")}
        except Exception:
            log.exception("cannot report GPU usage with this heartbeat")
            return {}

    def _labels(self) -> dict[str, str]:
        """The node's labels, for node selectors."""
        return self.config.labels

    def _conditions_now(self) -> list[NodeCondition]:
        log_disk = self.log_disk.condition()
        return [log_disk] if log_disk is not None else []

    def _condition_types(self) -> list[str]:
        return [c.type for c in self._conditions_now()]

    def _register(self, resend: bool = True) -> None:
        """Register (or refresh) the node; with ``resend``, report every task again afterwards."""
        conditions = self._conditions_now()
        inventory = self.config.inventory.model_copy(update={"conditions": conditions})
        body = {
            "name": self.config.name,
            "labels": self._labels(),
            "inventory": inventory.model_dump(mode="json"),
            "agent_url": self.url,
            "agent_secret": self.secret,
        }
        self.http.post("/api/v1/nodes", json=body).raise_for_status()
        self._conditions = [c.type for c in conditions]
        if resend:
            self.reported.clear()  # a (re)registered node re-sends everything it knows
            self.final.clear()
            self.changed.set()

    # reconcile -----------------------------------------------------------------------------

    def desired(self) -> dict[str, TaskLaunch]:
        assert self.feed is not None
        out = {}
        for job in self.feed.snapshot().values():
            for launch in launches_for(job, self.config.name):
                out[launch.key] = launch
        return out

    def task_dirs(self) -> Iterator[TaskDir]:
        for job_dir in self.jobs_dir.iterdir() if self.jobs_dir.exists() else []:
            if not job_dir.is_dir():
                continue
            for task_dir in job_dir.iterdir():
                if not task_dir.is_dir():
                    continue
                task, _, attempt = task_dir.name.rpartition("-a")
                try:
                    yield TaskDir(uuid.UUID(job_dir.name), uuid.UUID(task), int(attempt), task_dir)
                except ValueError:
                    continue

    def reconcile(self) -> None:
        """Start what should run, stop what should not, report what changed, clean up."""
        assert self.feed is not None
        desired = self.desired()
        self.enforcement.set_slices(desired.values(), self.feed.snapshot(), self.jobs_dir)
        if self.data is not None:  # datasets running tasks mount are never evicted
            self.data.cache.set_pins(
                {str(m.dataset_id) for t in desired.values() for m in t.data if m.dataset_id}
            )
        on_disk = {d.key: d for d in self.task_dirs()}
        for key, launch in desired.items():
            if key not in on_disk and key not in self.launching:
                self.launching.add(key)
                self._pool.submit(self._launch, launch)
        reports = []
        for key, task_dir in on_disk.items():
            if key in self.final:
                continue  # its outcome is reported and acknowledged: nothing can change
            try:
                report = self._observe(key, task_dir, key in desired)
            except Exception:  # one broken task directory must not stop the others' reports
                log.exception("cannot observe task %s", key)
                continue
            if report is not None and self.reported.get(key) != (report["state"], report["exit_code"]):
                reports.append((key, report))
        for key, launch in desired.items():
            if launch.env.get("TESSERA_ELASTIC_ROLE") == "head" and key in on_disk:
                self._train_events(launch, on_disk[key].path)
        self._send(reports)
        if self.feed.listed:
            self._clean(on_disk)

    def _observe(self, key: str, task_dir: TaskDir, wanted: bool) -> dict[str, Any] | None:
        """Look at one task attempt: stop it if unwanted, and say what to report."""
        assert self.feed is not None
        state = shim.read_state(task_dir.path)
        if state is None:
            # launched but no state yet: give the shim time, then call it a failed start
            age = time.time() - task_dir.path.stat().st_mtime
            if key in self.launching or age < LAUNCH_TIMEOUT:
                return None
            state = shim.ShimState(
                shim_pid=0,
                shim_start_time=0,
                exit_code=127,
                finished_at=time.time(),
                start_error="the task's supervisor never started",
            )
            shim.write_state(task_dir.path, state)
        # liveness first, then the state again: an exit recorded in between is not lost
        alive = is_alive(state.shim_pid, state.shim_start_time)
        if not alive:
            state = shim.read_state(task_dir.path) or state
        running = alive and state.exit_code is None
        # only a control plane's list (not the disk cache) may make the agent stop a task
        if (
            running
            and not wanted
            and self.feed.listed
            and key not in self.stopping
            and key not in self.launching
        ):
            log.info("stopping task %s (no longer assigned here)", key)
            self.enforcement.release_task(key)
            shim.stop(task_dir.path)
            self.stopping.add(key)
        if running:
            logs.note_size(self.task_log_dir(task_dir.job_id, key))
        self.log_disk.observe(key, state.log_dropped_bytes, state.log_error, running)
        if not alive and state.exit_code is None:
            kill_orphan(state)
        return task_report(task_dir, state, alive)

    def _launch(self, launch: TaskLaunch) -> None:
        task_dir = self.jobs_dir / str(launch.job_id) / launch.key
        try:
            if launch.key not in self.desired():
                return  # cancelled while it waited for a launch slot
            # the agent's own settings (database URL, tokens) are never a task's business
            env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
            env.update(launch.env)
            task_dir.mkdir(parents=True, exist_ok=True)
            log_dir = self.task_log_dir(launch.job_id, launch.key)
            try:
                log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:  # its disk full: the shim drops the output and the task runs
                log.warning("cannot make the log directory %s: %s", log_dir, exc)
            if "TESSERA_ELASTIC" in launch.env:
                env["TESSERA_ELASTIC_EVENTS"] = str(task_dir / train_events.FILE)
            env.update(task_env(launch, self.config.device, self.enforcement.enforcer, task_dir, env))
            for mount in launch.data:
                if self.data is None or mount.dataset_id is None:
                    raise RuntimeError(f"dataset {mount.dataset!r} cannot be cached on this node")
                dataset_id = str(mount.dataset_id)
                if mount.mode == "stream":  # read through the block cache as the task goes
                    env[mount.env_name] = str(self.data.cache.dataset_dir(dataset_id))
                    env[f"{mount.env_name}_URL"] = f"{self.url}/stream/{dataset_id}"
                    env[f"{mount.env_name}_TOKEN"] = stream_token(self.secret, dataset_id)
                else:  # filled before the task starts
                    env[mount.env_name] = str(self.data.ensure(dataset_id, mount.dataset))
            _check_master_port(launch.env)
            shim.launch(
                task_dir,
                launch.argv,
                env,
                cwd=launch.cwd,
                grace_seconds=self.config.grace_seconds,
                # an elastic job's node drains itself from its Ray cluster before it stops its raylet
                term_main_only="TESSERA_ELASTIC" in launch.env,
                output=log_dir / shim.OUTPUT_LOG,
            )
        except Exception as exc:
            log.exception("could not launch %s", launch.key)
            task_dir.mkdir(parents=True, exist_ok=True)
            if shim.read_state(task_dir) is None:
                shim.write_state(
                    task_dir,
                    shim.ShimState(
                        shim_pid=0,
                        shim_start_time=0,
                        exit_code=127,
                        finished_at=time.time(),
                        start_error=f"the node could not start the task: {exc}",
                    ),
                )
        finally:
            self.launching.discard(launch.key)
            self.changed.set()

    def _train_events(self, launch: TaskLaunch, path: Path) -> None:
        """Forward what an elastic job's driver wrote about Ray Train (jobs/elastic/events.py).

        Sent at once, and the read offset is kept only once the control plane has them: a
        ``running`` event lost would leave the job RESIZING or RECOVERING.
        """
        found, offset = train_events.pending(path)
        out = []
        for e in found:
            at = datetime.fromtimestamp(e.at, UTC)
            if e.event == "running":
                workers = e.workers or 0
                message = f"Ray Train's worker group is training with {workers} worker(s)"
                out.append(
                    NodeEvent(
                        reason="TrainingRunning",
                        type=EventType.NORMAL,
                        message=message,
                        job_id=launch.job_id,
                        at=at,
                        workers=workers,
                    )
                )
            else:
                source = e.source if e.source in ("worker", "preemption", "controller") else "worker"
                out.append(
                    NodeEvent(
                        reason="TrainingFailed",
                        message=e.error[:1900],
                        job_id=launch.job_id,
                        at=at,
                        source=source,
                    )
                )
        if out:
            body = {"events": [e.model_dump(mode="json") for e in out]}
            try:
                r = self.http.post(f"/api/v1/nodes/{self.config.name}/events", json=body)
            except httpx.HTTPError as exc:
                log.info("could not send training events yet: %s", exc)
                return
            if r.status_code not in (200, 422):
                return
            if r.status_code == 422:
                log.error("control plane refused training events %s; dropping them", r.text[:300])
        train_events.commit(path, offset)  # reports (not forwarded) move the offset too

    def _event(self, event: NodeEvent) -> None:
        with self._outbox_lock:
            self.outbox.append(event)
        self.changed.set()

    def _flush_events(self) -> None:
        """Send what the enforcement saw; kept for the next try if the control plane is away."""
        with self._outbox_lock:
            events = list(self.outbox)
        if not events:
            return
        body = {"events": [e.model_dump(mode="json") for e in events]}
        try:
            r = self.http.post(f"/api/v1/nodes/{self.config.name}/events", json=body)
        except httpx.HTTPError as exc:
            log.info("could not send %d event(s) yet: %s", len(events), exc)
            return
        if r.status_code not in (200, 422):
            log.info("events answered %s: %s", r.status_code, r.text[:300])
            return
        if r.status_code == 422:
            log.error("control plane refused events %s; dropping them", r.text[:300])
        with self._outbox_lock:
            for _ in events:
                if self.outbox:
                    self.outbox.popleft()

    def _send(self, reports: list[tuple[str, dict[str, Any]]]) -> None:
        self._flush_events()  # first: a job's SliceMemoryExceeded comes before its end
        for i in range(0, len(reports), REPORT_BATCH):
            batch = reports[i : i + REPORT_BATCH]
            status = self._post_reports(batch)
            if status == 422:
                # one malformed report must not block the others forever: send singly, drop the bad
                for item in batch:
                    if self._post_reports([item]) == 422:
                        log.error("control plane refused report %s; dropping it", item[1])
                        self.reported[item[0]] = (item[1]["state"], item[1]["exit_code"])

    def _post_reports(self, batch: list[tuple[str, dict[str, Any]]]) -> int:
        try:
            r = self.http.post(
                f"/api/v1/nodes/{self.config.name}/reports", json={"reports": [body for _, body in batch]}
            )
        except httpx.HTTPError as exc:
            log.info("could not report %d task(s) yet: %s", len(batch), exc)
            return 0
        if r.status_code != 200:
            log.info("reports answered %s: %s", r.status_code, r.text[:300])
            return r.status_code
        for key, body in batch:
            self.reported[key] = (body["state"], body["exit_code"])
            if body["state"] in FINAL:
                self.final.add(key)
        return 200

    def _clean(self, on_disk: dict[str, TaskDir]) -> None:
        """Remove the directories (and logs) of jobs that were deleted."""
        assert self.feed is not None
        known = set(self.feed.snapshot())
        for task_dir in on_disk.values():
            if task_dir.job_id in known or task_dir.key in self.launching:
                continue
            state = shim.read_state(task_dir.path)
            if state is not None and is_alive(state.shim_pid, state.shim_start_time):
                continue  # stopped above; removed once it has exited
            shutil.rmtree(task_dir.path, ignore_errors=True)
            if self.config.log_dir is not None:
                _remove_with_empty_parent(self.task_log_dir(task_dir.job_id, task_dir.key))
            self.reported.pop(task_dir.key, None)
            self.stopping.discard(task_dir.key)
            self.final.discard(task_dir.key)
            parent = task_dir.path.parent
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()

    def task_path(self, job_id: uuid.UUID, key: str) -> Path:
        return self.jobs_dir / str(job_id) / key

    def task_log_dir(self, job_id: uuid.UUID, key: str) -> Path:
        """Where a task attempt's output.log (and its time index) is: its task dir unless --log-dir."""
        return self.log_root / str(job_id) / key


def _remove_with_empty_parent(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # the job's directory, once its last task's logs are gone
    except OSError:
        pass


def _check_master_port(env: dict[str, str]) -> None:
    """Rank 0 of a multi-task job listens on MASTER_PORT: refuse to start it if another program
    holds that port (the job fails with StartError, and a retry gets another port). A service
    replica's PORT is checked the same way."""
    if "PORT" in env and "TESSERA_REPLICA_ID" in env:
        name, port = "PORT", int(env["PORT"])
    elif env.get("RANK") != "0" or int(env.get("WORLD_SIZE", "1")) < 2 or "MASTER_PORT" not in env:
        return
    else:
        name, port = "MASTER_PORT", int(env["MASTER_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise RuntimeError(f"{name} {port} is in use on this node ({exc.strerror})") from None
