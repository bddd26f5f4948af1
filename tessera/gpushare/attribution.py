"""Which slice a GPU process belongs to: the shim it descends from, never what its environment says.

Locally every task runs under a per-task shim (a child subreaper), so a process belongs to a slice
when walking its parent chain reaches that slice's shim. A process is identified by (pid, start time)
-- the start time being field 22 of /proc/<pid>/stat, in clock ticks since boot, the unit the shim
records -- so a reused pid is never mistaken for the shim. ``TESSERA_SLICE_ID`` in the process's
environment is returned as a hint for humans and never used to decide: any process can set it.

`attribute` is pure (it reads a process table you give it); `snapshot` reads that table from /proc
for the pids in question and their ancestors; `attribute_live` does both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from tessera.node.procs import read_stat

SLICE_ENV = "TESSERA_SLICE_ID"
_MAX_DEPTH = 1024  # deeper than any real tree; stops a corrupt (cyclic) table from looping


@dataclass(frozen=True)
class ProcInfo:
    """The few facts about a process that attribution needs."""

    pid: int
    ppid: int
    start_time: int
    state: str = "R"
    slice_hint: str | None = None


def read_proc(pid: int, *, with_hint: bool = False) -> ProcInfo | None:
    """Read /proc/<pid>/stat (``procs.read_stat``, and environ when `with_hint`); None if the process
    does not exist. An unreadable environ (another user's process) just gives no hint."""
    stat = read_stat(pid)
    if stat is None:
        return None
    hint = _read_hint(pid) if with_hint else None
    return ProcInfo(pid=pid, ppid=stat.ppid, start_time=stat.start_time, state=stat.state, slice_hint=hint)


def _read_hint(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    prefix = SLICE_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


@dataclass(frozen=True)
class SliceShim:
    """A slice on this node and the shim of the task holding it. `gpu_uuid` None matches any GPU."""

    slice_id: str
    shim_pid: int
    shim_start_time: int
    gpu_uuid: str | None = None


@dataclass(frozen=True)
class Attribution:
    """The verdict for one process: its slice, or None with the reason why not."""

    pid: int
    slice_id: str | None
    reason: str
    shim_pid: int | None = None
    hint: str | None = None

    @property
    def attributed(self) -> bool:
        return self.slice_id is not None


def attribute(
    pids: Iterable[int],
    slices: Sequence[SliceShim],
    procs: Mapping[int, ProcInfo],
    gpu_uuid: str | None = None,
) -> list[Attribution]:
    """Attribute each pid to the slice whose shim it descends from, using only the table `procs`.

    With `gpu_uuid`, only slices on that GPU count: a process of a task that uses a GPU it was not
    given is reported, unattributed, with the shim it came from. A chain that breaks (an ancestor
    vanished, or its pid now names a process younger than its child) is unattributed for this round.
    """
    shims: dict[tuple[int, int], list[SliceShim]] = {}
    for s in slices:
        shims.setdefault((s.shim_pid, s.shim_start_time), []).append(s)
    return [_attribute_one(pid, shims, procs, gpu_uuid) for pid in pids]


def _attribute_one(
    pid: int,
    shims: Mapping[tuple[int, int], list[SliceShim]],
    procs: Mapping[int, ProcInfo],
    gpu_uuid: str | None,
) -> Attribution:
    leaf = procs.get(pid)
    if leaf is None:
        return Attribution(pid, None, "process gone")
    hint = leaf.slice_hint
    current = leaf
    for _ in range(_MAX_DEPTH):
        found = shims.get((current.pid, current.start_time))
        if found is not None:
            return _pick(pid, current.pid, found, gpu_uuid, hint)
        if current.ppid <= 0:
            return Attribution(pid, None, "no shim ancestor", hint=hint)
        parent = procs.get(current.ppid)
        if parent is None:
            return Attribution(pid, None, f"ancestor {current.ppid} vanished while reading", hint=hint)
        if parent.start_time > current.start_time:
            # A parent cannot start after its child: the ppid was reused between our reads.
            return Attribution(pid, None, f"ancestor {current.ppid} was replaced while reading", hint=hint)
        current = parent
    return Attribution(pid, None, "process chain too deep", hint=hint)


def _pick(
    pid: int, shim_pid: int, found: list[SliceShim], gpu_uuid: str | None, hint: str | None
) -> Attribution:
    ids = ", ".join(sorted(s.slice_id for s in found))
    candidates = [s for s in found if gpu_uuid is None or s.gpu_uuid in (None, gpu_uuid)]
    if len(candidates) == 1:
        return Attribution(pid, candidates[0].slice_id, "descends from shim", shim_pid, hint)
    if not candidates:
        reason = f"descends from the shim of slice(s) {ids}, none of them on GPU {gpu_uuid}"
    else:
        reason = f"descends from the shim of slices {ids}; name the GPU to choose"
    return Attribution(pid, None, reason, shim_pid, hint)


def snapshot(pids: Iterable[int], read: Callable[..., ProcInfo | None] = read_proc) -> dict[int, ProcInfo]:
    """Read the given pids (with their slice hints) and all their ancestors from /proc.

    Processes that are gone by the time they are read are simply absent from the table.
    """
    table: dict[int, ProcInfo] = {}
    for pid in pids:
        info = read(pid, with_hint=True)
        depth = 0
        while info is not None and depth < _MAX_DEPTH:
            table[info.pid] = info
            if info.ppid <= 0 or info.ppid in table:
                break
            info = read(info.ppid)
            depth += 1
    return table


def attribute_live(
    pids: Iterable[int], slices: Sequence[SliceShim], gpu_uuid: str | None = None
) -> list[Attribution]:
    """`attribute` over a fresh /proc snapshot of `pids` and their ancestors."""
    wanted = list(pids)
    return attribute(wanted, slices, snapshot(wanted), gpu_uuid)
