"""The elastic driver's account of what Ray Train did, as JSON lines in the head task's directory.

The driver appends (callbacks in driver.py); the node agent reads what is new and
forwards the events that move the job (``running`` and ``failed``) to the control
plane. ``report`` lines record training progress (step, loss, workers) for
benchmarks and are not forwarded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE = "elastic-events.jsonl"
OFFSET = "elastic-events.offset"
FORWARDED = frozenset({"running", "failed"})


@dataclass(frozen=True)
class TrainEvent:
    event: str  # running | failed | report
    at: float
    workers: int | None = None
    source: str = ""  # failed: worker, preemption or controller (driver.failure_source)
    error: str = ""
    step: int | None = None
    metrics: dict[str, float] | None = None
    checkpoint: bool = False


def append(path: Path, event: str, **fields: Any) -> None:
    """One event, one line; appends are atomic enough for one writer per file."""
    record = {"event": event, "at": time.time(), **fields}
    line = json.dumps(record, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: Path, offset: int = 0) -> tuple[list[TrainEvent], int]:
    """Whole lines past ``offset``, and the offset after the last whole line."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        try:
            record = json.loads(raw)
            events.append(
                TrainEvent(
                    event=str(record["event"]),
                    at=float(record["at"]),
                    workers=int(record["workers"]) if record.get("workers") is not None else None,
                    source=str(record.get("source", "")),
                    error=str(record.get("error", ""))[:1000],
                    step=int(record["step"]) if record.get("step") is not None else None,
                    metrics={k: float(v) for k, v in (record.get("metrics") or {}).items()},
                    checkpoint=bool(record.get("checkpoint", False)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # a line a task wrote badly is skipped, not fatal
    return events, offset + end


def pending(task_dir: Path) -> tuple[list[TrainEvent], int]:
    """Events to forward from one head task's directory, and the offset to commit once they are."""
    path = task_dir / FILE
    try:
        offset = int((task_dir / OFFSET).read_text())
    except (FileNotFoundError, ValueError):
        offset = 0
    if not path.exists():
        return [], offset
    events, new = read(path, offset)
    return [e for e in events if e.event in FORWARDED], new


def commit(task_dir: Path, offset: int) -> None:
    """Remember that events up to ``offset`` were delivered (survives agent restarts)."""
    mark = task_dir / OFFSET
    try:
        if int(mark.read_text()) == offset:
            return
    except (FileNotFoundError, ValueError):
        pass
    tmp = mark.with_suffix(".tmp")
    tmp.write_text(str(offset))
    tmp.replace(mark)
