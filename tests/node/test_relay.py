"""A task's output through its shim's relay: a log that cannot be written costs output, counted and
noted, never the task."""

from __future__ import annotations

import os
from pathlib import Path

from tessera.node.logdisk import LOG_DISK_FULL, LogDisk
from tessera.node.relay import LogRelay

FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk


def feed(relay: LogRelay, data: bytes) -> None:
    os.write(relay.write_fd, data)
    relay.pump()


def test_output_reaches_the_log_in_order(tmp_path: Path) -> None:
    relay = LogRelay(tmp_path / "output.log")
    try:
        for i in range(100):
            feed(relay, f"line {i}\n".encode())
        assert (tmp_path / "output.log").read_text() == "".join(f"line {i}\n" for i in range(100))
        assert relay.dropped == 0 and relay.error is None
    finally:
        relay.close()


def test_a_full_disk_drops_and_counts_and_never_raises() -> None:
    relay = LogRelay(FULL)
    try:
        for _ in range(10):
            feed(relay, b"x" * 1000)
        assert relay.dropped == 10_000
        assert relay.error is not None and "log disk is full" in relay.error
    finally:
        relay.close()


def test_writing_resumes_after_a_note_of_what_is_missing(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.mkdir()  # cannot be opened as a file: every write is dropped
    relay = LogRelay(log)
    try:
        feed(relay, b"lost one\n")
        feed(relay, b"lost two\n")
        assert relay.dropped == 18 and relay.error is not None
        log.rmdir()
        feed(relay, b"back\n")
        lines = log.read_text().splitlines()
        assert lines[-2].startswith("[tessera] 18 bytes of output dropped here: ")
        assert lines[-1] == "back"
        assert relay.error is None and relay.dropped == 18  # the total stays: it was lost
    finally:
        relay.close()


def test_eof_only_when_every_writer_is_gone(tmp_path: Path) -> None:
    relay = LogRelay(tmp_path / "output.log")
    try:
        writer = os.dup(relay.write_fd)  # the task's copy
        relay.task_started()
        os.write(writer, b"last words\n")
        relay.pump()
        assert not relay.eof
        os.close(writer)
        relay.drain()
        assert relay.eof and (tmp_path / "output.log").read_bytes() == b"last words\n"
    finally:
        relay.close()


def test_log_disk_condition_follows_dropping_tasks(tmp_path: Path) -> None:
    disk = LogDisk(tmp_path)  # plenty of space: only a task's drops make it "full"
    assert disk.condition() is None
    disk.observe("t-a0", 500, "the log disk is full (No space left on device)", running=True)
    condition = disk.condition()
    assert condition is not None and condition.type == LOG_DISK_FULL
    assert "500 bytes so far" in condition.message and "tasks keep running" in condition.message
    disk.observe("t-a0", 500, None, running=True)  # it writes again
    assert disk.condition() is None
    disk.observe("t-a0", 900, "the log disk is full (No space left on device)", running=True)
    disk.observe("t-a0", 900, "the log disk is full (No space left on device)", running=False)  # ended
    assert disk.condition() is None
