"""Attribution by process tree: real processes under fake shims, and table-driven edge cases."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tessera.gpushare.attribution import (
    ProcInfo,
    SliceShim,
    attribute,
    attribute_live,
    read_proc,
    snapshot,
)
from tessera.node.procs import proc_start_time


def children(pid: int) -> list[ProcInfo]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (info := read_proc(int(name), with_hint=True)) is not None and info.ppid == pid:
            out.append(info)
    return out


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Tree:
    """Processes this test started, each in its own process group, killed by group id at the end."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def spawn(self, script: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["sh", "-c", script],
            env={**os.environ, **env},
            start_new_session=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.groups.append(proc.pid)
        return proc

    def kill(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    yield t
    t.kill()


def start_of(pid: int) -> int:
    start = proc_start_time(pid)
    assert start is not None
    return start


def test_processes_belong_to_the_shim_they_descend_from(tree: Tree) -> None:
    # Shim A: a child claiming slice b in its environment, and a grandchild (the inner sh must fork
    # because a command follows the sleep).
    shim_a = tree.spawn("TESSERA_SLICE_ID=b sleep 30 & sh -c 'sleep 30; true' & wait")
    shim_b = tree.spawn("sleep 30 & wait", TESSERA_SLICE_ID="b")
    # An orphan: its parent exits at once, so it is re-parented away from any shim.
    orphan_parent = tree.spawn("TESSERA_SLICE_ID=a sleep 30 & echo $!")
    assert orphan_parent.stdout is not None
    orphan = int(orphan_parent.stdout.readline())
    orphan_parent.wait()

    # Wait until every process has exec'd its command: a child between fork and exec still has its
    # parent's environment.
    def settled() -> bool:
        kids = children(shim_a.pid)
        grandkids = [g for k in kids if comm(k.pid) == "sh" for g in children(k.pid)]
        return (
            any(comm(k.pid) == "sleep" and k.slice_hint == "b" for k in kids)
            and any(comm(g.pid) == "sleep" for g in grandkids)
            and any(comm(k.pid) == "sleep" for k in children(shim_b.pid))
            and getattr(read_proc(orphan, with_hint=True), "slice_hint", None) == "a"
        )

    wait_for(settled, "the process trees")
    a_kids = children(shim_a.pid)
    claims_b = next(k for k in a_kids if k.slice_hint == "b")
    inner_sh = next(k for k in a_kids if comm(k.pid) == "sh")
    grandchild = children(inner_sh.pid)[0]
    (b_kid,) = children(shim_b.pid)

    slices = [
        SliceShim("a", shim_a.pid, start_of(shim_a.pid)),
        SliceShim("b", shim_b.pid, start_of(shim_b.pid)),
    ]
    pids = [grandchild.pid, claims_b.pid, b_kid.pid, orphan]
    got = {r.pid: r for r in attribute_live(pids, slices)}

    assert (got[grandchild.pid].slice_id, got[grandchild.pid].shim_pid) == ("a", shim_a.pid)
    assert got[claims_b.pid].slice_id == "a" and got[claims_b.pid].hint == "b"
    assert got[b_kid.pid].slice_id == "b" and got[b_kid.pid].hint == "b"
    assert not got[orphan].attributed and got[orphan].hint == "a"
    assert got[orphan].reason == "no shim ancestor"

    # A shim pid with another start time is a different process that reused the pid.
    reused = [SliceShim("a", shim_a.pid, start_of(shim_a.pid) + 1)]
    assert not any(r.attributed for r in attribute_live([grandchild.pid, claims_b.pid], reused))


def test_a_process_that_vanishes_mid_walk(tree: Tree) -> None:
    shim = tree.spawn("sh -c 'sleep 30; true' & wait")
    wait_for(lambda: len(children(shim.pid)) == 1, "the child")
    middle = children(shim.pid)[0]
    wait_for(lambda: len(children(middle.pid)) == 1, "the grandchild")
    leaf = children(middle.pid)[0]
    slices = [SliceShim("s", shim.pid, start_of(shim.pid))]

    def read_losing_middle(pid: int, with_hint: bool = False) -> ProcInfo | None:
        return None if pid == middle.pid else read_proc(pid, with_hint=with_hint)

    (verdict,) = attribute([leaf.pid], slices, snapshot([leaf.pid], read_losing_middle))
    assert not verdict.attributed and "vanished" in verdict.reason
    (verdict,) = attribute([leaf.pid], slices, snapshot([leaf.pid]))
    assert verdict.slice_id == "s"
    (gone,) = attribute_live([999_999_999], slices)
    assert gone.reason == "process gone"


def table(*rows: tuple[int, int, int]) -> dict[int, ProcInfo]:
    return {pid: ProcInfo(pid=pid, ppid=ppid, start_time=start) for pid, ppid, start in rows}


@pytest.mark.parametrize(
    ("procs", "slices", "gpu", "want_slice", "reason"),
    [
        # 10 (shim) -> 11 -> 12
        (table((1, 0, 1), (10, 1, 5), (11, 10, 6), (12, 11, 7)), [SliceShim("s", 10, 5)], None, "s", "shim"),
        # the process is the shim itself
        (table((1, 0, 1), (12, 1, 5)), [SliceShim("s", 12, 5)], None, "s", "shim"),
        # 11's parent pid now names a process that started after 11: the parent was replaced
        (
            table((1, 0, 1), (10, 1, 9), (11, 10, 6), (12, 11, 7)),
            [SliceShim("s", 10, 9)],
            None,
            None,
            "replaced",
        ),
        # the chain reaches pid 1 without a shim
        (table((1, 0, 1), (11, 1, 6), (12, 11, 7)), [SliceShim("s", 10, 5)], None, None, "no shim"),
        # one shim, two slices on two GPUs: the GPU decides
        (
            table((1, 0, 1), (10, 1, 5), (12, 10, 7)),
            [SliceShim("g0", 10, 5, "GPU-0"), SliceShim("g1", 10, 5, "GPU-1")],
            "GPU-1",
            "g1",
            "shim",
        ),
        (
            table((1, 0, 1), (10, 1, 5), (12, 10, 7)),
            [SliceShim("g0", 10, 5, "GPU-0"), SliceShim("g1", 10, 5, "GPU-1")],
            None,
            None,
            "name the GPU",
        ),
        # a task using a GPU it holds no slice on
        (
            table((1, 0, 1), (10, 1, 5), (12, 10, 7)),
            [SliceShim("g0", 10, 5, "GPU-0")],
            "GPU-7",
            None,
            "none of them",
        ),
        # a corrupt table with a cycle ends
        (table((11, 12, 6), (12, 11, 6)), [SliceShim("s", 10, 5)], None, None, "too deep"),
    ],
)
def test_attribute_table(
    procs: dict[int, ProcInfo], slices: list[SliceShim], gpu: str | None, want_slice: str | None, reason: str
) -> None:
    (verdict,) = attribute([12], slices, procs, gpu)
    assert verdict.slice_id == want_slice
    assert reason in verdict.reason
