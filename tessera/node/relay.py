"""A task's output, relayed by its shim from a pipe into its log file.

The task never writes the log itself, so a full log disk cannot fail its writes (a Python task's
``print`` would raise) or block it: the relay drops what cannot be written, counts it, and once
writing works again puts one line in the log saying how much is missing there. Memory stays bounded
(one chunk at a time); the pipe's buffer is all that holds a task back, and only while the shim
copies.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
PIPE_SIZE = 1 << 20  # fewer wake-ups for chatty tasks; the kernel may grant less
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def describe(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the log disk is full ({exc.strerror})"
    return f"the log cannot be written ({exc.strerror or exc})"


class LogRelay:
    """Copies from a pipe (the task's stdout and stderr) into ``path``, dropping what cannot be
    written. ``dropped`` counts bytes lost in all; ``error`` says why output is being dropped now
    (None while writing works)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        try:
            fcntl.fcntl(self.read_fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for an unprivileged user: the default will do
        self.log_fd: int | None = None
        self.dropped = 0
        self.error: str | None = None
        self.eof = False
        self._unnoted = 0  # dropped since the last notice in the log
        try:  # readers may wait for the file to appear; if it cannot be made now, it is tried again
            self._open()
        except OSError as exc:
            log.warning("cannot open the log %s yet: %s", path, exc)

    def _open(self) -> int:
        if self.log_fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self.log_fd = os.open(self.path, flags, 0o600)
        return self.log_fd

    def task_started(self) -> None:
        """The task holds the pipe's write end now: close ours, so EOF means every writer is gone."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pump(self, budget: int = 64) -> bool:
        """Copy what is waiting in the pipe (at most ``budget`` chunks, so the shim's other duties are
        not starved by a task that never stops printing); True if there may be more."""
        for _ in range(budget):
            try:
                data = os.read(self.read_fd, CHUNK)
            except BlockingIOError:
                return False
            except OSError as exc:  # pragma: no cover - a pipe read fails only if the fd is bad
                log.warning("cannot read the task's output: %s", exc)
                self.eof = True
                return False
            if not data:
                self.eof = True
                return False
            self._write(data)
        return True

    def drain(self) -> None:
        """Copy everything still in the pipe (the task and its descendants are gone)."""
        while self.pump(budget=1024):
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd, self.log_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1
        self.log_fd = None

    def _write(self, data: bytes) -> None:
        try:
            self._open()
        except OSError as cannot_open:
            self._drop(len(data), cannot_open)
            return
        if self.error is not None:
            # first what is missing here, so a reader knows the log has a hole and where
            notice = f"\n[tessera] {self._unnoted} bytes of output dropped here: {self.error}\n".encode()
            _, failed = self._write_all(notice)
            if failed is not None:
                self._drop(len(data), failed)  # a torn notice is only a notice: no task output in it
                return
            log.info("writing the log again after dropping %d bytes", self._unnoted)
            self.error = None
            self._unnoted = 0
        written, failed = self._write_all(data)
        if failed is not None:
            self._drop(len(data) - written, failed)

    def _write_all(self, data: bytes) -> tuple[int, OSError | None]:
        """Write all of ``data``; returns how much was written and the error that stopped it."""
        assert self.log_fd is not None
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(self.log_fd, view[done:])
            except OSError as exc:
                return done, exc
        return done, None

    def _drop(self, size: int, exc: OSError) -> None:
        if self.error is None:
            log.warning("dropping the task's output: %s", describe(exc))
        self.error = describe(exc)
        self.dropped += size
        self._unnoted += size
