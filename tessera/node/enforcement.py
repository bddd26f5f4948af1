"""The agent's side of slice enforcement: its slices to the gpushare `Enforcer`, what comes back to it.

The reconcile loop hands over the slices of the tasks it runs (`set_slices`): each task's shim and
main process (from its state file) are the roots that attribution starts from, and each slice carries
its queue's policy from its allocation. A thread polls the enforcer every `poll_seconds` (100 ms by
default). Its events go to the agent's outbox (a job's when they name a slice); its snapshot becomes
the `NodeUsage` sent with each heartbeat. When the watchdog stops a task, the task's directory is
marked first (``enforcement.json``), so that its report says SliceOOM whatever exit status it gets.

On Kubernetes the kubelet starts the tasks: `set_pod_slices` takes each running pod's cgroup instead
of a shim, attribution goes by that cgroup, and a stopped slice's whole pod cgroup is signalled.

Nothing this node stopped stays stopped: the stop ledger (``stopped.json``) is written before every
SIGSTOP; a predecessor's ledger is resumed at start-up; `close` (signal handlers, atexit) resumes
everything; and a watcher process resumes the ledger's processes if the agent is killed outright.
"""

from __future__ import annotations

import atexit
import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera.api.events import EventType
from tessera.api.jobs import SERVICE_LABEL, Allocation, Job, TerminalReason
from tessera.api.queues import SlicePolicy
from tessera.api.usage import GpuUsage, NodeEvent, NodeUsage, ProcessUsage, SliceUsage
from tessera.gpushare import resumer
from tessera.gpushare.device import DeviceBackend
from tessera.gpushare.enforce import EnforcementEvent, Enforcer, EnforcerConfig, SliceSpec, Snapshot
from tessera.gpushare.signals import Proc, StopLedger
from tessera.gpushare.simhelper import write_json_atomic
from tessera.jobs.launch import TaskLaunch
from tessera.node import shim
from tessera.node.procs import is_alive

log = logging.getLogger(__name__)
ENFORCEMENT_FILE = "enforcement.json"
LEDGER_FILE = "stopped.json"
NO_SHIM: Proc = (0, 0)  # a pod's slice: no process is pid 0, so no process descends from this "shim"


@dataclass(frozen=True)
class SliceContext:
    """Who a slice belongs to, for events and reports."""

    job: Job
    launch: TaskLaunch
    allocation: Allocation
    task_dir: Path

    @property
    def task(self) -> str:
        return f"{self.launch.group}-{self.launch.index}"


def node_ended(task_dir: Path) -> dict[str, Any] | None:
    """The node's own verdict on a task it stopped ({reason, message}), if it stopped it."""
    try:
        doc = json.loads((task_dir / ENFORCEMENT_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("reason") != TerminalReason.SLICE_OOM.value:
        return None
    return doc


class NodeEnforcement:
    def __init__(
        self,
        node: str,
        device: DeviceBackend | None,
        state_dir: Path,
        config: EnforcerConfig,
        on_event: Callable[[NodeEvent], None],
        cgroup_root: Path | None = None,
    ) -> None:
        self.node = node
        self.device = device
        self.config = config
        self.on_event = on_event
        self.ledger = StopLedger(state_dir / LEDGER_FILE)
        self.enforcer = Enforcer(
            device,
            config,
            ledger=self.ledger,
            emit=self._emit,
            on_kill=self.mark_stopped,
            cgroup_root=cgroup_root,
        )
        self._specs: list[SliceSpec] = []
        self._contexts: dict[str, SliceContext] = {}
        self._allocated: dict[str, tuple[int, float]] = {}
        self._watcher: subprocess.Popen[bytes] | None = None
        self._closed = False

    def start(self) -> None:
        """Resume what a predecessor left stopped; from now on nothing stopped survives this agent."""
        resumed = self.ledger.recover()
        if resumed:
            log.warning("resumed %d process(es) a previous agent left stopped", resumed)
        if self.device is not None and self.ledger.path is not None:
            self._watcher = resumer.start(self.ledger.path)
        atexit.register(self.close)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.enforcer.close()
        if self._watcher is not None and self._watcher.stdin is not None:
            self._watcher.stdin.close()  # it finds an empty ledger and exits
            try:
                self._watcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # slices -----------------------------------------------------------------------------------------

    def set_slices(self, launches: Iterable[TaskLaunch], jobs: dict[uuid.UUID, Job], jobs_dir: Path) -> None:
        """The slices of the tasks this node runs now (called by every reconcile pass)."""
        specs: list[SliceSpec] = []
        contexts: dict[str, SliceContext] = {}
        allocated: dict[str, tuple[int, float]] = {}
        for launch in launches:
            _count(allocated, launch)
            task_dir = jobs_dir / str(launch.job_id) / launch.key
            state = shim.read_state(task_dir)
            if (
                state is None
                or state.pid is None
                or state.pid_start_time is None
                or state.exit_code is not None
            ):
                continue  # not started yet, or over: nothing to enforce
            if not is_alive(state.shim_pid, state.shim_start_time):
                continue
            shim_proc, task = (state.shim_pid, state.shim_start_time), (state.pid, state.pid_start_time)
            for spec, context in _slices(launch, jobs[launch.job_id], task_dir, shim_proc, task, None):
                specs.append(spec)
                contexts[spec.slice_id] = context
        self._specs, self._contexts, self._allocated = specs, contexts, allocated

    def set_pod_slices(
        self,
        launches: Iterable[TaskLaunch],
        jobs: dict[uuid.UUID, Job],
        jobs_dir: Path,
        cgroups: Mapping[str, str],
    ) -> None:
        """`set_slices` where the kubelet runs the tasks: `cgroups` maps a running task attempt's key
        to its pod's cgroup (`cgroups.find_pod_cgroup`); a task without one is not enforced yet."""
        specs: list[SliceSpec] = []
        contexts: dict[str, SliceContext] = {}
        allocated: dict[str, tuple[int, float]] = {}
        for launch in launches:
            _count(allocated, launch)
            cgroup = cgroups.get(launch.key)
            if cgroup is None:
                continue
            task_dir = jobs_dir / str(launch.job_id) / launch.key
            for spec, context in _slices(launch, jobs[launch.job_id], task_dir, NO_SHIM, None, cgroup):
                specs.append(spec)
                contexts[spec.slice_id] = context
        self._specs, self._contexts, self._allocated = specs, contexts, allocated

    def slices(self) -> list[tuple[SliceSpec, SliceContext]]:
        """The slices being enforced now, with whose they are."""
        contexts = self._contexts
        return [(s, contexts[s.slice_id]) for s in self._specs]

    def release_task(self, key: str) -> None:
        """The task `key` is being stopped: resume its processes so that they see the SIGTERM."""
        ids = [s for s, c in self._contexts.items() if c.launch.key == key]
        self.enforcer.release(ids)

    # the loop ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop`; a failed poll is logged (at most once a minute) and the next one runs."""
        last_error = 0.0
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.enforcer.poll(self._specs)
            except Exception:
                if began - last_error > 60:
                    log.exception("enforcement poll failed")
                    last_error = began
            stop.wait(max(self.config.poll_seconds - (time.monotonic() - began), 0.0))

    def mark_stopped(self, spec: SliceSpec, message: str) -> None:
        """The watchdog is stopping this slice's task: say so in its directory, for its report."""
        context = self._contexts.get(spec.slice_id)
        if context is None:
            return
        doc = {"reason": TerminalReason.SLICE_OOM.value, "message": message, "at": time.time()}
        try:
            context.task_dir.mkdir(parents=True, exist_ok=True)  # a pod's task has none of its own
            write_json_atomic(context.task_dir / ENFORCEMENT_FILE, doc)
        except OSError:
            log.exception("could not mark task %s as stopped by the node", context.launch.key)

    def _emit(self, event: EnforcementEvent) -> None:
        context = self._contexts.get(event.slice_id) if event.slice_id else None
        message = event.message
        if context is not None:
            message = f"task {context.task}: {message}"
        else:
            message = f"node {self.node}: {message}"
        self.on_event(
            NodeEvent(
                reason=event.reason,
                message=message[:2000],
                type=EventType.WARNING if event.warning else EventType.NORMAL,
                job_id=context.job.id if context else None,
                at=datetime.now(UTC),
            )
        )

    # the report -------------------------------------------------------------------------------------

    def usage(self) -> NodeUsage:
        snap: Snapshot = self.enforcer.snapshot
        contexts = self._contexts
        slices = []
        for s in snap.slices:
            context = contexts.get(s.spec.slice_id)
            if context is None:
                continue  # released since the snapshot
            slices.append(
                SliceUsage(
                    slice_id=context.allocation.id,
                    job_id=context.job.id,
                    job=context.job.name,
                    project=context.job.project,
                    task=context.task,
                    gpu_uuid=s.spec.gpu_uuid,
                    mig_instance=s.spec.mig_instance,
                    memory_mib=s.spec.memory_mib,
                    compute_pct=s.spec.compute_pct,
                    used_memory_mib=s.used_mib,
                    share_pct=s.share_pct,
                    throttled_pct=s.throttled_pct,
                    processes=s.processes,
                    tier=s.tier.name,
                    memory_tier=s.tier.memory,
                    compute_tier=s.tier.compute,
                    cooperative=s.tier.cooperative,
                    policy=SlicePolicy.model_validate(
                        {"memory": s.spec.memory_policy, "compute": s.spec.compute_policy}
                    ),
                    state=s.state,
                )
            )
        gpus = []
        for g in snap.gpus:
            memory, compute = self._allocated.get(g.info.uuid, (0, 0.0))
            gpus.append(
                GpuUsage(
                    uuid=g.info.uuid,
                    index=g.info.index,
                    model=g.info.model,
                    memory_mib=g.info.memory_mib,
                    allocated_memory_mib=memory,
                    allocated_compute_pct=round(compute, 2),
                    used_memory_mib=g.used_mib,
                    utilization_pct=None if g.utilization_pct is None else round(g.utilization_pct, 1),
                    tier=g.tiers.best,
                    tiers=g.tiers.names,
                    lost=g.lost,
                    unattributed=[
                        ProcessUsage(pid=p.pid, used_memory_mib=p.used_mib, reason=p.reason, hint=p.hint)
                        for p in g.strays
                    ],
                )
            )
        return NodeUsage(
            node=self.node,
            at=datetime.fromtimestamp(snap.at, UTC),
            device=snap.device,
            device_error=snap.device_error,
            poll_seconds=self.config.poll_seconds,
            window_seconds=self.config.window_seconds,
            gpus=gpus,
            slices=slices,
        )


def _count(allocated: dict[str, tuple[int, float]], launch: TaskLaunch) -> None:
    """Add a task's slices to what is allocated on each GPU (for the usage report)."""
    for alloc in launch.slices:
        if alloc.gpu_uuid:
            memory, compute = allocated.get(alloc.gpu_uuid, (0, 0.0))
            allocated[alloc.gpu_uuid] = (memory + alloc.memory_mib, compute + alloc.compute_pct)


def _slices(
    launch: TaskLaunch, job: Job, task_dir: Path, shim_proc: Proc, task: Proc | None, cgroup: str | None
) -> list[tuple[SliceSpec, SliceContext]]:
    """The slice specs of one running task: its GPU slices, each with its queue's policy."""
    may_throttle = len(job.tasks) <= 1 and SERVICE_LABEL not in job.spec.labels
    out = []
    for alloc in launch.slices:
        if not alloc.gpu_uuid:
            continue
        policy = alloc.enforcement or SlicePolicy()
        spec = SliceSpec(
            slice_id=str(alloc.id),
            gpu_uuid=alloc.gpu_uuid,
            memory_mib=alloc.memory_mib,
            compute_pct=alloc.compute_pct,
            shim=shim_proc,
            task=task,
            mig_instance=alloc.mig_instance,
            memory_policy=policy.memory,
            compute_policy=policy.compute,
            may_throttle=may_throttle,
            cgroup=cgroup,
        )
        out.append((spec, SliceContext(job, launch, alloc, task_dir)))
    return out
