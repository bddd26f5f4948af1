"""Task log files: tail, since (via a time index the agent keeps) and follow, in bounded memory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 64 * 1024
INDEX = "output.index"  # lines of "<unix time> <size then>", appended as the log grows


def note_size(task_dir: Path, now: float | None = None) -> None:
    """Record the log's current size with a timestamp (what ``since`` searches)."""
    log = task_dir / "output.log"
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return
    index = task_dir / INDEX
    last = _last_offset(index)
    if last is not None and last >= size:
        return
    try:
        with index.open("a") as fh:
            fh.write(f"{now or time.time():.3f} {size}\n")
    except OSError:
        pass  # its disk is full: `since` is coarser for this stretch, and nothing else is lost


def _last_offset(index: Path) -> int | None:
    try:
        with index.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            fh.seek(max(0, end - 256))
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return None
    try:
        return int(lines[-1].split()[1]) if lines else None
    except (IndexError, ValueError):
        return None  # a line torn by a full disk: the next entry repairs the index


def offset_since(task_dir: Path, since: float) -> int:
    """Where output written after unix time ``since`` starts, to the index's granularity.

    The size noted at the last index entry before ``since`` was all written by then.
    """
    start = 0
    try:
        with (task_dir / INDEX).open() as fh:
            for line in fh:
                try:
                    stamp, size = float(line.split()[0]), int(line.split()[1])
                except (IndexError, ValueError):
                    continue  # torn by a full disk
                if stamp >= since:
                    break
                start = size
    except FileNotFoundError:
        return 0
    return start


def offset_tail(path: Path, lines: int) -> int:
    """Byte offset where the last ``lines`` lines of ``path`` start (reads backwards in chunks)."""
    if lines <= 0:
        return path.stat().st_size
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        pos, found = end, 0
        # a trailing newline ends the last line; it does not start another
        if end:
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                found = -1
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            # count newlines with bytes methods (C speed), not byte by byte in Python
            newlines = block.count(b"\n")
            if found + newlines < lines:
                found += newlines
                continue
            cut = len(block)
            while True:
                cut = block.rindex(b"\n", 0, cut)
                found += 1
                if found == lines:
                    return pos + cut + 1
        return 0


def stream(
    path: Path, start: int, follow: bool, finished: Callable[[], bool], poll: float = 0.25
) -> Iterator[bytes]:
    """Bytes of ``path`` from ``start``; with ``follow``, until ``finished()`` and EOF."""
    while not path.exists():
        if not follow or finished():
            return
        time.sleep(poll)
    with path.open("rb") as fh:
        fh.seek(start)
        while True:
            chunk = fh.read(CHUNK)
            if chunk:
                yield chunk
                continue
            if not follow:
                return
            done = finished()
            chunk = fh.read(CHUNK)  # the task may have written its last words before finishing
            if chunk:
                yield chunk
                continue
            if done:
                return
            time.sleep(poll)
