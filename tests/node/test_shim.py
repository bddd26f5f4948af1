"""The per-task shim, with real processes and real signals.

Every shim and task started here is tracked by the `shims` fixture and killed at teardown (by pid and
start time, never by name), so a failing test does not leave processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tessera.node import procs
from tessera.node.procs import descendants, is_alive, proc_start_time, read_stat
from tessera.node.shim import ShimState, launch, read_state, stop


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and is_alive(pid, start)


class Shims:
    """Launches shims and remembers them (and any extra processes) for cleanup."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.dirs: list[Path] = []
        self.extra: list[tuple[int, int]] = []  # (pid, start_time) of e.g. daemons a task spawned
        self.env = dict(os.environ)

    def launch(self, argv: list[str], name: str = "task", grace: float = 10, **kw: object) -> Path:
        task_dir = self.tmp_path / name
        self.dirs.append(task_dir)
        env = kw.pop("env", self.env)
        assert isinstance(env, dict)
        launch(task_dir, argv, env, grace_seconds=grace, **kw)  # type: ignore[arg-type]
        return task_dir

    def finished(self, task_dir: Path, timeout: float = 10) -> ShimState:
        """Wait until the shim recorded the task's end and has exited; return the final state."""
        wait_for(
            lambda: (s := read_state(task_dir)) is not None and s.finished_at is not None, timeout, "exit"
        )
        state = read_state(task_dir)
        assert state is not None
        wait_for(lambda: not is_alive(state.shim_pid, state.shim_start_time), 5, "shim to exit")
        return state

    def cleanup(self) -> None:
        for task_dir in self.dirs:
            state = read_state(task_dir)
            if state is None:
                continue
            if alive(state.shim_pid, state.shim_start_time):
                stop(task_dir)
                deadline = time.monotonic() + 3
                while alive(state.shim_pid, state.shim_start_time) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if alive(state.shim_pid, state.shim_start_time):
                for pid in descendants(state.shim_pid):
                    _kill(pid, signal.SIGKILL)
                _kill(state.shim_pid, signal.SIGKILL)
            if state.pid is not None and alive(state.pid, state.pid_start_time):
                _kill(state.pid, signal.SIGKILL)
        for pid, start in self.extra:
            if is_alive(pid, start):
                _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def shims(tmp_path: Path) -> Iterator[Shims]:
    tracker = Shims(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


def output(task_dir: Path) -> str:
    return (task_dir / "output.log").read_text(errors="replace")


# --- procs helpers ------------------------------------------------------------------------------------


def test_proc_start_time_with_odd_comm(tmp_path: Path) -> None:
    # A comm containing ") (" and spaces breaks naive whitespace splitting of /proc/<pid>/stat.
    odd = tmp_path / "a) b (c"
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "30"])
    try:
        wait_for(lambda: ")" in _comm(proc.pid), 5, "exec")
        start = proc_start_time(proc.pid)
        mine = proc_start_time(os.getpid())
        assert start is not None and mine is not None
        uptime_ticks = float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")
        assert mine <= start <= uptime_ticks + 1
        assert is_alive(proc.pid, start)
        assert not is_alive(proc.pid, start + 1)
        stat = read_stat(proc.pid)
        assert stat is not None and stat.ppid == os.getpid()
    finally:
        proc.kill()
        proc.wait()
    assert not is_alive(proc.pid, start)
    assert proc_start_time(proc.pid) is None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except FileNotFoundError:
        return ""


def test_zombie_is_not_alive_but_has_start_time() -> None:
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: (s := read_stat(proc.pid)) is not None and s.state == "Z", 5, "zombie")
        start = proc_start_time(proc.pid)
        assert start is not None
        assert not is_alive(proc.pid, start)
    finally:
        proc.wait()


def test_descendants_walks_the_tree() -> None:
    proc = subprocess.Popen(["sh", "-c", "sh -c 'sleep 30 & wait' & sleep 30 & wait"])
    try:
        # proc -> (inner sh -> sleep), sleep: three descendants, one of them a grandchild.
        def sleeps() -> list[int]:
            return [pid for pid in descendants(proc.pid) if _comm(pid).strip() == "sleep"]

        wait_for(lambda: len(sleeps()) == 2, 5, "both sleeps")
        found = descendants(proc.pid)
        assert len(found) == 3
        parents = {stat.ppid for pid in sleeps() if (stat := read_stat(pid)) is not None}
        assert proc.pid in parents and len(parents) == 2
        assert proc.pid not in found
        assert set(found) <= set(descendants(os.getpid()))
    finally:
        for pid in descendants(proc.pid):
            _kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_set_child_subreaper_in_a_child() -> None:
    # Run in a throwaway process: being a subreaper would change the test runner itself.
    code = textwrap.dedent(
        """
        from tessera.node.procs import set_child_subreaper
        set_child_subreaper()
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        out = ctypes.c_int(0)
        assert libc.prctl(37, ctypes.byref(out), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
        assert out.value == 1, out.value
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert procs.PR_SET_CHILD_SUBREAPER == 36


# --- the shim -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_and_output(shims: Shims, code: int) -> None:
    task = shims.launch(["sh", "-c", f"echo to-stdout; echo to-stderr >&2; exit {code}"])
    state = shims.finished(task)
    assert state.exit_code == code
    assert state.signal is None and state.start_error is None
    assert state.pid is not None and state.pid_start_time is not None
    assert state.started_at is not None and state.finished_at is not None
    assert state.started_at <= state.finished_at
    assert state.shim_pid != os.getpid() and state.pid != state.shim_pid
    out = output(task)
    assert "to-stdout\n" in out and "to-stderr\n" in out


def test_task_gets_exactly_its_env_and_cwd(shims: Shims, tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    env = {"PATH": os.environ["PATH"], "TESSERA_TEST_VAR": "forty two"}
    task = shims.launch(
        ["sh", "-c", 'echo "var=$TESSERA_TEST_VAR"; echo "home=${HOME-unset}"; pwd'],
        env=env,
        cwd=str(workdir),
    )
    assert shims.finished(task).exit_code == 0
    assert output(task).splitlines() == ["var=forty two", "home=unset", str(workdir)]


def test_command_not_found(shims: Shims) -> None:
    task = shims.launch(["tessera-no-such-command-xyz", "arg"])
    state = read_state(task)
    assert state is not None  # launch returns once the failure is recorded
    assert state.exit_code == 127
    assert state.start_error is not None and "tessera-no-such-command-xyz" in state.start_error
    assert "not found" in state.start_error
    assert state.pid is None and state.finished_at is not None
    shims.finished(task)


def test_command_not_executable(shims: Shims, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    task = shims.launch([str(script)])
    state = read_state(task)
    assert state is not None and state.exit_code == 126
    assert state.start_error is not None and str(script) in state.start_error


def test_launch_leaves_no_zombie_in_the_caller(shims: Shims) -> None:
    def zombie_children() -> set[int]:
        return {
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit()
            and (s := read_stat(int(p))) is not None
            and s.ppid == os.getpid()
            and s.state == "Z"
        }

    before = zombie_children()
    task = shims.launch(["true"])
    state = shims.finished(task)
    assert zombie_children() == before
    shim = read_stat(state.shim_pid)
    assert shim is None or shim.ppid != os.getpid()  # reparented away from us: we never wait() on it


def test_stop_sends_sigterm(shims: Shims) -> None:
    task = shims.launch(["sleep", "60"], grace=10)
    state = read_state(task)
    assert state is not None and alive(state.pid, state.pid_start_time)
    started = time.monotonic()
    assert stop(task)
    final = shims.finished(task)
    # Well under the 10 s grace: it was the SIGTERM, not the SIGKILL fallback, that ended it.
    assert time.monotonic() - started < 5
    assert final.exit_code == 143 and final.signal == signal.SIGTERM
    assert not alive(final.pid, final.pid_start_time)
    assert not stop(task)  # the shim is gone: nothing to signal


def test_stop_escalates_to_sigkill_after_grace(shims: Shims) -> None:
    task = shims.launch(["sh", "-c", 'trap "" TERM; echo ready; sleep 60; echo not-killed'], grace=1)
    wait_for(lambda: "ready" in output(task), 5, "trap installed")
    started = time.monotonic()
    assert stop(task)
    final = shims.finished(task)
    elapsed = time.monotonic() - started
    assert final.exit_code == 137 and final.signal == signal.SIGKILL
    assert 0.9 <= elapsed < 6
    assert "not-killed" not in output(task)


# Both tasks start a daemon that leaves the task's process group, then exit 7 once the test says "go".
# The setsid daemon ignores SIGTERM, so only the SIGKILL after the leftover grace gets rid of it.
DOUBLE_FORK_DAEMON = textwrap.dedent(
    """
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            open("daemon.tmp", "w").write(str(os.getpid()))
            os.rename("daemon.tmp", "daemon.pid")
            time.sleep(300)
        os._exit(0)  # the intermediate exits 0: its status must not be mistaken for the task's
    while not os.path.exists("go"):
        time.sleep(0.01)
    print("started", flush=True)
    sys.exit(7)
    """
)

SETSID_DAEMON = (
    "setsid sh -c 'trap \"\" TERM; echo $$ > daemon.tmp; mv daemon.tmp daemon.pid; exec sleep 300' &"
    " while [ ! -e go ]; do sleep 0.01; done; echo started; exit 7"
)


@pytest.mark.parametrize("kind", ["double-fork", "setsid"])
def test_background_daemon_dies_with_the_task(shims: Shims, tmp_path: Path, kind: str) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    argv = (
        [sys.executable, "-c", DOUBLE_FORK_DAEMON] if kind == "double-fork" else ["sh", "-c", SETSID_DAEMON]
    )
    task = shims.launch(argv, cwd=str(workdir), grace=1)
    wait_for(lambda: (workdir / "daemon.pid").exists(), 10, "daemon to start")
    daemon_pid = int((workdir / "daemon.pid").read_text())
    daemon_start = proc_start_time(daemon_pid)
    assert daemon_start is not None and is_alive(daemon_pid, daemon_start)
    shims.extra.append((daemon_pid, daemon_start))
    state = read_state(task)
    assert state is not None
    # It escaped the task's process group, so only the subreaper + descendants walk can find it.
    assert os.getpgid(daemon_pid) != state.pid
    assert daemon_pid in descendants(state.shim_pid)
    (workdir / "go").touch()
    final = shims.finished(task)
    assert final.exit_code == 7 and final.signal is None
    assert "started" in output(task)
    # Dead by the time the exit is recorded; not even a zombie: the shim reaped it.
    assert proc_start_time(daemon_pid) != daemon_start


def test_readoption_identity_and_ignored_signals(shims: Shims) -> None:
    task = shims.launch(["sleep", "60"])
    state = read_state(task)
    assert state is not None and state.pid is not None and state.pid_start_time is not None
    assert is_alive(state.shim_pid, state.shim_start_time)
    assert not is_alive(state.shim_pid, state.shim_start_time + 1)  # a reused pid is not our shim
    assert is_alive(state.pid, state.pid_start_time)
    # The pgid of the task is its pid; the shim is in a session of its own, not the caller's.
    assert os.getpgid(state.pid) == state.pid
    assert os.getsid(state.shim_pid) != os.getsid(0)
    # A terminal hangup or ^C aimed at the shim must not take it (or the task) down.
    os.kill(state.shim_pid, signal.SIGHUP)
    os.kill(state.shim_pid, signal.SIGINT)
    time.sleep(0.3)
    assert is_alive(state.shim_pid, state.shim_start_time)
    assert is_alive(state.pid, state.pid_start_time)
    # ...while the task itself has default dispositions again (an ignored signal would be inherited).
    os.kill(state.pid, signal.SIGINT)
    final = shims.finished(task)
    assert final.exit_code == 130 and final.signal == signal.SIGINT
    assert not is_alive(state.shim_pid, state.shim_start_time)


def test_task_survives_the_launcher_dying(shims: Shims, tmp_path: Path) -> None:
    task = tmp_path / "orphaned"
    shims.dirs.append(task)
    marker = tmp_path / "go"
    # The task waits for a marker file, so it is certainly still running after the launcher is gone.
    argv = ["sh", "-c", f"echo started; while [ ! -e {marker} ]; do sleep 0.05; done; exit 5"]
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from tessera.node.shim import launch
        launch(Path({str(task)!r}), {argv!r}, dict(os.environ))
        os.kill(os.getpid(), signal.SIGKILL)  # the agent dies abruptly
        """
    )
    launcher = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert launcher.returncode == -signal.SIGKILL
    state = read_state(task)
    assert state is not None and state.exit_code is None
    assert is_alive(state.shim_pid, state.shim_start_time)
    assert alive(state.pid, state.pid_start_time)
    marker.touch()
    final = shims.finished(task)
    assert final.exit_code == 5
    assert final.pid == state.pid and final.shim_pid == state.shim_pid
    assert "started" in output(task)


def _vm_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def test_large_output_does_not_go_through_shim_memory(shims: Shims) -> None:
    size = 200 * 1024 * 1024
    # The sleep keeps the task alive after writing, when a buffering shim would hold everything.
    task = shims.launch(["sh", "-c", "head -c 200M /dev/zero; sleep 1"])
    state = read_state(task)
    assert state is not None
    samples: list[int] = []
    deadline = time.monotonic() + 30
    while (s := read_state(task)) is not None and s.finished_at is None and time.monotonic() < deadline:
        rss = _vm_rss_kb(state.shim_pid)
        if rss is not None and is_alive(state.shim_pid, state.shim_start_time):
            samples.append(rss)
        time.sleep(0.05)
    final = shims.finished(task, timeout=30)
    assert final.exit_code == 0
    assert samples, "never sampled the shim's RSS while the task ran"
    assert max(samples) < 100 * 1024, f"shim RSS peaked at {max(samples)} kB"
    log = task / "output.log"
    assert log.stat().st_size == size
    log.unlink()  # do not keep 200 MB in pytest's retained tmp dirs


def test_task_with_a_full_log_disk_runs_to_its_exit_status(shims: Shims) -> None:
    code = "import sys\nfor i in range(2000): print('x' * 100, flush=True)\nsys.exit(4)"
    full = Path("/dev/full")  # ENOSPC on every write, as a full disk
    task_dir = shims.launch([sys.executable, "-c", code], output=full)
    state = shims.finished(task_dir, timeout=60)
    assert state.exit_code == 4  # print() never failed: the task ran to its own end
    assert state.log_dropped_bytes == 2000 * 101
    assert state.log_error is not None and "full" in state.log_error
