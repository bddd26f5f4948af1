"""Log tail, since and follow on real files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tessera.node import logs


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("a\nb\nc\n", 1, "c\n"),
        ("a\nb\nc\n", 2, "b\nc\n"),
        ("a\nb\nc", 1, "c"),
        ("a\nb\nc\n", 10, "a\nb\nc\n"),
        ("a\nb\nc\n", 0, ""),
        ("", 3, ""),
        ("x" * 200_000 + "\n" + "y\n" * 3, 4, "x" * 200_000 + "\n" + "y\n" * 3),
        ("line\n" * 50_000, 2, "line\nline\n"),
    ],
)
def test_tail(tmp_path: Path, text: str, n: int, expected: str) -> None:
    path = write(tmp_path / "output.log", text)
    assert path.read_text()[logs.offset_tail(path, n) :] == expected


def test_since_uses_the_size_index(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("old\n")
    logs.note_size(tmp_path, now=100.0)
    with log.open("a") as fh:
        fh.write("new\n")
    logs.note_size(tmp_path, now=200.0)
    logs.note_size(tmp_path, now=300.0)  # unchanged size: no new entry
    assert (tmp_path / logs.INDEX).read_text().count("\n") == 2
    assert logs.offset_since(tmp_path, 150.0) == 4  # only what came after t=100
    assert logs.offset_since(tmp_path, 50.0) == 0
    assert logs.offset_since(tmp_path, 250.0) == 8


def test_follow_reads_until_finished(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("first\n")
    done = threading.Event()

    def writer() -> None:
        time.sleep(0.3)
        with log.open("a") as fh:
            fh.write("second\n")
        done.set()

    threading.Thread(target=writer).start()
    out = b"".join(logs.stream(log, 0, True, done.is_set, poll=0.05))
    assert out == b"first\nsecond\n"
    assert b"".join(logs.stream(log, 6, False, done.is_set)) == b"second\n"
