"""The per-task shim: a tiny supervisor that outlives the node agent.

One shim runs per task. It is detached from the agent (own session, reparented away from the agent by a
double fork), is the task's parent and a child subreaper, owns the task's process group, relays the task's
stdout/stderr from a pipe into ``output.log`` and records pid, start time and exit status atomically in
``state.json`` in the task directory. The log may live on another disk (the agent's ``--log-dir``):
when that disk is full the shim drops output (and counts it) instead of failing or blocking the task,
and writes again, after a line saying what was dropped, once there is space. The agent can die and
restart at any time: the shim keeps running, the exit status is written to disk, and the agent
re-adopts the shim by (pid, process start time) so that a reused pid is never mistaken for it.

Task directory layout::

    spec.json    argv, env, cwd of the task (written by `launch`)
    state.json   ShimState, replaced atomically on every change
    output.log   the task's stdout+stderr, relayed by the shim (or where spec.json's "output" says)
    shim.log     the shim's own diagnostics

Command line (what `launch` runs)::

    python -m tessera.node.shim --task-dir DIR [--grace SECONDS] [--detach] -- argv...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tessera.gpushare.signals import signal_process
from tessera.node.procs import descendants, is_alive, proc_start_time, set_child_subreaper
from tessera.node.relay import LogRelay

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
SPEC_FILE = "spec.json"
OUTPUT_LOG = "output.log"
SHIM_LOG = "shim.log"

LAUNCH_TIMEOUT = 10.0
# After the main task exits on its own, leftovers (background daemons) get at most this long to go
# quietly before SIGKILL; a task's stragglers should not hold the slot for a whole stop grace period.
LEFTOVER_GRACE = 2.0
# Once everything was SIGKILLed, how long to keep waiting for it to vanish. A process stuck in
# uninterruptible sleep (e.g. in a driver) cannot be killed; the exit code must not wait on it forever.
KILL_WAIT = 10.0


@dataclass
class ShimState:
    """What the shim records about itself and its task in ``state.json``."""

    shim_pid: int
    shim_start_time: int
    pid: int | None = None
    pid_start_time: int | None = None
    started_at: float | None = None
    exit_code: int | None = None
    finished_at: float | None = None
    start_error: str | None = None
    signal: int | None = None
    log_dropped_bytes: int = 0  # task output lost because the log could not be written (disk full)
    log_error: str | None = None  # why it is being dropped now; None once writing works again


_STATE_FIELDS = {f.name for f in dataclasses.fields(ShimState)}


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers see either the old or the new file, never a torn one, even across a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # fsync the directory too, so the rename itself survives a power loss.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_state(task_dir: Path, state: ShimState) -> None:
    """Atomically replace ``task_dir/state.json`` with `state` (tmp file in the same dir, fsync, rename)."""
    _write_json_atomic(task_dir / STATE_FILE, dataclasses.asdict(state))


def read_state(task_dir: Path) -> ShimState | None:
    """The recorded ShimState of a task dir, or None if there is none (yet) or it is unreadable."""
    try:
        data = json.loads((task_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        # Ignore unknown keys so an older agent can read a newer shim's state.
        return ShimState(**{k: v for k, v in data.items() if k in _STATE_FIELDS})
    except TypeError:
        return None


def _shim_log_tail(task_dir: Path, limit: int = 4000) -> str:
    try:
        data = (task_dir / SHIM_LOG).read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


def launch(
    task_dir: Path,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None = None,
    grace_seconds: float = 10,
    term_main_only: bool = False,
    output: Path | None = None,
) -> ShimState:
    """Start a detached shim running `argv` and return its state once the task has started (or failed to).

    `env` is the task's complete environment; it travels in ``spec.json`` so the shim itself runs with
    the caller's normal environment. `cwd` None means the caller's current directory. The shim is
    started through a short-lived intermediate (double fork) which is reaped here, so the caller never
    has a zombie or a child to wait for. Waits up to ~10 s for ``state.json`` to show the task's pid or a
    start error; if the shim is still alive but slow, returns the partial state (pid None). Raises
    RuntimeError if a live shim already owns `task_dir` or if the shim dies without recording anything.
    With `term_main_only`, a stop SIGTERMs the main process alone (as Kubernetes signals a container's
    PID 1), for tasks that stop their own children in order; whatever is left when it exits, or when
    the grace period ends, is terminated as usual. `output` is the log file (default
    ``task_dir/output.log``).
    """
    if not argv:
        raise ValueError("argv must not be empty")
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    old = read_state(task_dir)
    if old is not None and is_alive(old.shim_pid, old.shim_start_time):
        raise RuntimeError(f"a shim (pid {old.shim_pid}) is still running in {task_dir}")
    # A stale state.json from an earlier run would otherwise be mistaken for the new shim's.
    (task_dir / STATE_FILE).unlink(missing_ok=True)
    spec = {
        "argv": list(argv),
        "env": dict(env),
        "cwd": cwd,
        "term_main_only": term_main_only,
        "output": str(output) if output is not None else None,
    }
    _write_json_atomic(task_dir / SPEC_FILE, spec)

    cmd = [
        sys.executable,
        "-m",
        "tessera.node.shim",
        "--task-dir",
        str(task_dir),
        "--grace",
        repr(float(grace_seconds)),
        "--detach",
        "--",
        *argv,
    ]
    with open(task_dir / SHIM_LOG, "ab") as shim_log:
        intermediate = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=shim_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    # The intermediate only forks the real shim and exits, so this wait is short; it must be reaped
    # here or it would linger as a zombie child of the agent.
    try:
        rc = intermediate.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        intermediate.kill()
        intermediate.wait()
        raise RuntimeError(f"shim launcher hung; shim.log:\n{_shim_log_tail(task_dir)}") from None
    if rc != 0:
        raise RuntimeError(f"shim failed to start (exit {rc}); shim.log:\n{_shim_log_tail(task_dir)}")

    deadline = time.monotonic() + LAUNCH_TIMEOUT
    state: ShimState | None = None
    while True:
        state = read_state(task_dir)
        if state is not None:
            if state.pid is not None or state.start_error is not None or state.exit_code is not None:
                return state
            if not is_alive(state.shim_pid, state.shim_start_time):
                # Re-read: it may have written its final state just before exiting.
                state = read_state(task_dir)
                if state is not None and (state.pid is not None or state.exit_code is not None):
                    return state
                tail = _shim_log_tail(task_dir)
                raise RuntimeError(f"shim died before starting the task; shim.log:\n{tail}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if state is None:
        raise RuntimeError(f"shim did not record its state in time; shim.log:\n{_shim_log_tail(task_dir)}")
    return state


def stop(task_dir: Path) -> bool:
    """Ask the task's shim to stop the task (SIGTERM to the shim); True if a live shim was signalled.

    The shim then SIGTERMs the task's process group and descendants and SIGKILLs them after its grace
    period. Only signals the shim if (shim_pid, shim_start_time) still identifies a live process.
    """
    state = read_state(Path(task_dir))
    if state is None:
        return False
    return signal_process(state.shim_pid, state.shim_start_time, signal.SIGTERM)


# ---------------------------------------------------------------------------------------------------
# The shim process itself.


class _Supervisor:
    """Runs one task to completion; single-threaded, event loop driven by a signal wakeup pipe."""

    def __init__(
        self,
        task_dir: Path,
        argv: list[str],
        env: dict[str, str] | None,
        cwd: str | None,
        grace: float,
        term_main_only: bool = False,
        output: Path | None = None,
    ) -> None:
        self.term_main_only = term_main_only
        self.relay = LogRelay(output or task_dir / OUTPUT_LOG)
        self._saved_log: tuple[int, str | None] = (0, None)
        self._log_saved_at = 0.0
        self._unsaved = False
        self.task_dir = task_dir
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.grace = grace
        self._group_gone = False
        self.me = os.getpid()
        my_start = proc_start_time(self.me)
        if my_start is None:  # pragma: no cover - our own /proc entry always exists
            raise RuntimeError("cannot read our own start time")
        self.state = ShimState(shim_pid=self.me, shim_start_time=my_start)
        self.stop_requested = False
        self.main_pid: int | None = None
        self.main_status: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record; the main loop (woken through the wakeup fd) does the work outside the handler.
        if signum == signal.SIGTERM:
            self.stop_requested = True

    def _install_signals(self) -> int:
        """Route signals into a wakeup pipe; returns its read end."""
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        # Python-level handlers rather than SIG_IGN for HUP/INT: an ignored disposition would be
        # inherited by the task through exec, a caught one is reset to default there. SIGCHLD needs a
        # handler at all so that it writes to the wakeup pipe.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        return rfd

    def _save(self, final: bool = False) -> None:
        """Record the state. A failure (its disk full) is retried on the next pass, and the final
        state (the exit status, which must never be lost) until it is written."""
        self.state.log_dropped_bytes = self.relay.dropped
        self.state.log_error = self.relay.error
        while True:
            try:
                write_state(self.task_dir, self.state)
            except OSError as exc:
                log.warning("cannot record the task's state yet: %s", exc)
                self._unsaved = True
                if not final:
                    return
                time.sleep(1)
                continue
            self._unsaved = False
            self._saved_log = (self.relay.dropped, self.relay.error)
            self._log_saved_at = time.monotonic()
            return

    def _save_log_news(self) -> None:
        """Record dropped output (at most once a second), and retry a state that failed to save."""
        news = (self.relay.dropped, self.relay.error) != self._saved_log
        if self._unsaved or (news and time.monotonic() - self._log_saved_at >= 1.0):
            self._save()

    def _start_task(self) -> bool:
        """Start the task; on failure record the start error and return False."""
        try:
            proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                # through the relay: a full log disk must neither fail nor block the task's writes
                stdout=self.relay.write_fd,
                stderr=subprocess.STDOUT,
                close_fds=True,
                process_group=0,
            )
        except OSError as e:
            self.relay.close()
            self.state.exit_code, self.state.start_error = self._start_error(e)
            self.state.finished_at = time.time()
            self._save(final=True)
            return False
        finally:
            self.relay.task_started()
        self.main_pid = proc.pid
        # We reap with os.waitpid(-1) ourselves. Marking the Popen as finished stops subprocess from ever
        # calling waitpid on this pid (e.g. from __del__), which could steal the task's exit status.
        proc.returncode = 0
        self.state.pid = proc.pid
        # Even if the task already exited it is an unreaped zombie, so its start time is still readable.
        self.state.pid_start_time = proc_start_time(proc.pid)
        self.state.started_at = time.time()
        self._save()
        return True

    def _start_error(self, e: OSError) -> tuple[int, str]:
        """Map a failed exec to the shell's conventions: 127 not found, 126 found but not runnable."""
        cmd = self.argv[0]
        if self.cwd is not None and e.filename == self.cwd:
            # subprocess reports a failed chdir with the cwd as the filename.
            return 127 if isinstance(e, FileNotFoundError) else 126, (
                f"cannot use working directory {self.cwd}: {e.strerror}"
            )
        if isinstance(e, FileNotFoundError):
            return 127, f"command not found: {cmd}"
        if isinstance(e, PermissionError):
            return 126, f"permission denied: {cmd}"
        return 126, f"cannot execute {cmd}: {e.strerror or e}"

    def _reap(self) -> None:
        """Reap every exited child: the main task and orphans re-parented to us as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Orphans' statuses are of no interest; only the main task's status is the task's.
            if pid == self.main_pid:
                self.main_status = status

    def _signal_all(self, sig: int) -> bool:
        """Signal the task's process group and every descendant of the shim; True if anyone was left."""
        found = False
        if self.main_pid is not None and not self._group_gone:
            try:
                # The pgid cannot be reused while any member of the group exists, so this is safe even
                # after the leader was reaped; once the group is empty it could be, so stop using it.
                os.killpg(self.main_pid, sig)
                found = True
            except (ProcessLookupError, PermissionError):
                self._group_gone = True
        for pid in descendants(self.me):
            try:
                # Every live descendant is ours: orphans re-parent to us (subreaper) and we reap them,
                # so these pids cannot have been recycled by an unrelated process.
                os.kill(pid, sig)
                found = True
            except ProcessLookupError:
                pass
        return found

    def _leftovers(self) -> bool:
        return bool(descendants(self.me))

    def run(self) -> int:
        """Supervise the task until it and all of its descendants are gone; returns the shim's exit code."""
        wakeup = self._install_signals()
        set_child_subreaper()
        self._save()
        if not self._start_task():
            return 0

        term_deadline: float | None = None  # when to SIGKILL
        killed_at: float | None = None
        cleanup_started = False
        while True:
            self._reap()
            now = time.monotonic()
            if self.stop_requested and term_deadline is None:
                log.info("stop requested: SIGTERM to the task, SIGKILL in %.1fs", self.grace)
                if self.term_main_only and self.main_pid is not None and self.main_status is None:
                    try:
                        os.kill(self.main_pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                else:
                    self._signal_all(signal.SIGTERM)
                term_deadline = now + self.grace
            if self.main_status is not None and not cleanup_started:
                cleanup_started = True
                if self._signal_all(signal.SIGTERM):
                    log.info("task exited; terminating what is left of it")
                    short = now + min(self.grace, LEFTOVER_GRACE)
                    term_deadline = short if term_deadline is None else min(term_deadline, short)
            if term_deadline is not None and now >= term_deadline:
                # Repeat on every pass: something may have forked while we were scanning.
                if self._signal_all(signal.SIGKILL) and killed_at is None:
                    log.info("grace period over: SIGKILL")
                    killed_at = now
            if self.main_status is not None:
                if not self._leftovers():
                    break
                if killed_at is not None and now - killed_at > KILL_WAIT:
                    log.warning("some task processes survive SIGKILL: %s", descendants(self.me))
                    break

            # Children's exits and stop requests wake us through the pipe; the cap is only a safety net.
            timeout = 1.0
            if term_deadline is not None and now < term_deadline:
                timeout = min(timeout, term_deadline - now)
            if cleanup_started or (term_deadline is not None and now >= term_deadline):
                # Waiting for descendants that are not our children (nothing signals their death) or
                # for killed processes to disappear: poll briefly.
                timeout = min(timeout, 0.05)
            if self.relay.pump():
                timeout = 0  # more output is waiting: copy it before sleeping
            self._save_log_news()
            readers = [wakeup] if self.relay.eof else [wakeup, self.relay.read_fd]
            try:
                select.select(readers, [], [], timeout)
                while os.read(wakeup, 4096):
                    pass
            except BlockingIOError:
                pass

        self._reap()
        self.relay.drain()  # every writer is gone: what is left in the pipe is the task's last words
        self.relay.close()
        status = self.main_status
        assert status is not None
        if os.WIFSIGNALED(status):
            self.state.signal = os.WTERMSIG(status)
            self.state.exit_code = 128 + self.state.signal
        else:
            self.state.exit_code = os.waitstatus_to_exitcode(status)
        self.state.finished_at = time.time()
        self._save(final=True)
        return 0


def _parse_args(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in args:
        split = args.index("--")
        own, argv = args[:split], args[split + 1 :]
    else:
        own, argv = args, []
    parser = argparse.ArgumentParser(prog="python -m tessera.node.shim", description="Per-task shim.")
    parser.add_argument("--task-dir", required=True, type=Path)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--detach", action="store_true", help="fork; the parent exits at once (double fork)")
    return parser.parse_args(own), argv


def main(args: list[str] | None = None) -> int:
    """Entry point of ``python -m tessera.node.shim --task-dir DIR [--grace S] [--detach] -- argv...``.

    argv after ``--`` overrides ``spec.json``'s argv; env and cwd come from ``spec.json`` if present
    (otherwise the shim's own environment and directory).
    """
    ns, argv = _parse_args(sys.argv[1:] if args is None else args)
    task_dir: Path = ns.task_dir.resolve()
    spec: dict[str, Any] = {}
    try:
        spec = json.loads((task_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    argv = argv or list(spec.get("argv") or [])
    if not argv:
        sys.stderr.write("shim: no command given\n")
        return 2
    env = spec.get("env")
    cwd = spec.get("cwd")

    if ns.detach:
        # Second half of the double fork: the launcher's child (which the agent reaps) exits at once and
        # this grandchild is re-parented to init/the nearest subreaper, never a zombie of the agent.
        if os.fork() != 0:
            os._exit(0)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s shim[{os.getpid()}] %(levelname)s %(message)s",
    )
    try:
        term_main_only = bool(spec.get("term_main_only", False))
        output = Path(spec["output"]) if spec.get("output") else None
        return _Supervisor(task_dir, argv, env, cwd, ns.grace, term_main_only, output).run()
    except Exception:
        log.exception("shim failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
