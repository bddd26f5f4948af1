"""What a node agent says about a task attempt, read from its shim's state on disk."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera.api.jobs import TaskState
from tessera.node import shim
from tessera.node.enforcement import node_ended
from tessera.node.procs import is_alive

log = logging.getLogger(__name__)


@dataclass
class TaskDir:
    """One task attempt on disk: jobs/<job_id>/<task_id>-a<attempt>/."""

    job_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.task_id}-a{self.attempt}"


FINAL = frozenset({TaskState.SUCCEEDED.value, TaskState.FAILED.value})


def kill_orphan(state: shim.ShimState) -> None:
    """The shim died without recording an exit: kill its task if it still runs (pid + start time)."""
    if state.pid is None or state.pid_start_time is None or not is_alive(state.pid, state.pid_start_time):
        return
    log.warning("shim of task pid %s is gone; killing the orphaned task group", state.pid)
    try:
        os.killpg(state.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def task_report(task_dir: TaskDir, state: shim.ShimState | None, alive: bool) -> dict[str, Any] | None:
    if state is None:
        return None
    body = _shim_report(task_dir, state, alive)
    if body is None or (body["state"] != TaskState.FAILED.value and body["exit_code"] is None):
        return body  # still running (or starting): nothing to say about how it ended
    ended = node_ended(task_dir.path)
    if ended is not None:  # the node stopped it: that is the reason, whatever status it exited with
        body.update(
            state=TaskState.FAILED.value, reason=ended["reason"], message=str(ended["message"])[:1000]
        )
    return body


def _shim_report(task_dir: TaskDir, state: shim.ShimState, alive: bool) -> dict[str, Any] | None:
    started = _iso(state.started_at)
    finished = _iso(state.finished_at)
    body: dict[str, Any] = {
        "task_id": str(task_dir.task_id),
        "attempt": task_dir.attempt,
        "exit_code": state.exit_code,
        "start_error": state.start_error,
        "started_at": started,
        "finished_at": finished,
    }
    if state.exit_code is not None:
        body["state"] = (TaskState.SUCCEEDED if state.exit_code == 0 else TaskState.FAILED).value
    elif alive and state.pid is not None:
        body["state"] = TaskState.RUNNING.value
    elif alive:
        return None  # still starting
    else:
        # the shim died without recording an exit (killed -9 itself): the outcome is unknown
        body.update(
            state=TaskState.FAILED.value, exit_code=-1, start_error=None, finished_at=_iso(time.time())
        )
    return body


def _iso(stamp: float | None) -> str | None:
    return datetime.fromtimestamp(stamp, UTC).isoformat() if stamp else None
