"""Attribution by cgroup, for nodes where the kubelet starts tasks (Kubernetes): no shim is a task's
parent there, but every container of a pod lives under the pod's cgroup.

A slice names the cgroup of its pod (for example ``/kubepods.slice/.../kubepods-pod<uid>.slice``,
or the cgroup v1 form ``/kubepods/burstable/pod<uid>``); a process belongs to the slice whose cgroup
contains the process's own cgroup (the path itself or one below it). A process's cgroup is read from
``/proc/<pid>/cgroup``: on a v1 or hybrid host the line of a controller the kubelet always sets
(``memory``, ``cpu``, ``pids``: on a hybrid host the unified line is systemd's, not the kubelet's),
else the unified (v2) line ``0::/path``. As with the shim tree, ``TESSERA_SLICE_ID`` in the
environment never decides.

An agent in a container with a cgroup namespace of its own (the default for containers on cgroup v2)
sees other containers' cgroups relative to its own, as ``/../../kubepods-...-pod<uid>.slice/...``;
such a path is matched against a slice's cgroup by the components it does show (see `_contains`).

`find_pod_cgroup` finds a pod's cgroup from its uid in the kubelet's layouts; `cgroup_pids` and
`signal_cgroup` reach every process in it, for the watchdog's stop path.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_V1_CONTROLLERS = ("memory", "cpu,cpuacct", "cpu", "pids")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_SEARCH_DEPTH = 4  # how deep below the root an unusual kubelet --cgroup-root is looked for


@dataclass(frozen=True)
class CgroupVerdict:
    """Which slice (if any) a process belongs to by cgroup, and the cgroup that decided."""

    pid: int
    slice_id: str | None
    cgroup: str | None  # the process's cgroup path; None when it could not be read (gone)

    @property
    def attributed(self) -> bool:
        return self.slice_id is not None


def parse_cgroup(text: str) -> str | None:
    """The process's cgroup path from the text of ``/proc/<pid>/cgroup`` (see the module docstring)."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
            continue
        for name in controllers.split(","):
            v1.setdefault(name, path)
        v1.setdefault(controllers, path)
    for name in _V1_CONTROLLERS:
        if name in v1:
            return v1[name]
    return unified


def read_cgroup(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The cgroup of a live process; None if it is gone or unreadable."""
    try:
        return parse_cgroup((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None


def _contains(parent: str, child: str) -> bool:
    parent = parent.rstrip("/") or "/"
    if parent == "/":
        return True
    if child.startswith("/.."):
        return _contains_relative(parent, child)
    return child == parent or child.startswith(parent + "/")


def _contains_relative(parent: str, child: str) -> bool:
    """`child` as a cgroup namespace shows a cgroup outside it: ``/../..`` up to an unknown ancestor,
    then down. It is in `parent` when its path below that ancestor starts with a tail of `parent`
    that ends in `parent`'s own directory (a pod's directory names its uid: the match is unique)."""
    wanted = [c for c in parent.split("/") if c]
    parts = [c for c in child.split("/") if c]
    while parts and parts[0] == "..":
        parts.pop(0)
    if not wanted or not parts:
        return False
    return any(parts[:k] == wanted[-k:] for k in range(1, len(wanted) + 1))


def attribute_by_cgroup(
    pids: Iterable[int], slices: Mapping[str, str], cgroups: Mapping[int, str | None]
) -> list[CgroupVerdict]:
    """Attribute each pid to the slice whose pod cgroup (``slices``: slice id -> cgroup path)
    contains its cgroup (``cgroups``: pid -> path, None if unreadable). The deepest match wins, so
    nested slices (never expected) resolve to the innermost; no match, no slice."""
    ranked = sorted(slices.items(), key=lambda kv: len(kv[1]), reverse=True)
    out = []
    for pid in pids:
        path = cgroups.get(pid)
        found = None
        if path is not None:
            found = next((slice_id for slice_id, cg in ranked if _contains(cg, path)), None)
        out.append(CgroupVerdict(pid, found, path))
    return out


def attribute_live_by_cgroup(
    pids: Iterable[int], slices: Mapping[str, str], proc: Path = Path("/proc")
) -> list[CgroupVerdict]:
    """``attribute_by_cgroup`` with each pid's cgroup read from ``/proc`` now."""
    pids = list(pids)
    return attribute_by_cgroup(pids, slices, {pid: read_cgroup(pid, proc) for pid in pids})


# finding a pod's cgroup ---------------------------------------------------------------------------


def pod_cgroup_layouts(uid: str) -> list[str]:
    """Where the kubelet puts a pod's cgroup, relative to the hierarchy's root: the systemd driver's
    slices (besteffort, burstable, then guaranteed directly under kubepods.slice) and the cgroupfs
    driver's directories."""
    u = uid.replace("-", "_")  # systemd unit names cannot hold "-" inside a component
    return [
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice",
        f"kubepods.slice/kubepods-pod{u}.slice",
        f"kubepods/besteffort/pod{uid}",
        f"kubepods/burstable/pod{uid}",
        f"kubepods/pod{uid}",
    ]


def _hierarchies(root: Path) -> list[Path]:
    """The hierarchy roots under `root`: itself (v2, unified) and the v1 controllers' directories."""
    return [root, *(root / c for c in _V1_CONTROLLERS)]


def find_pod_cgroup(uid: str, root: Path = CGROUP_ROOT) -> str | None:
    """The cgroup of the pod with `uid`, as ``/proc/<pid>/cgroup`` shows it (relative to its
    hierarchy's root, with a leading "/"); None if the kubelet has not made it (yet).

    The kubelet's usual layouts are tried first (cgroup v2 at `root`, v1 under a controller such as
    ``memory/``); then, for a kubelet with another ``--cgroup-root`` (kind nests its pods under
    ``kubelet.slice``), directories whose names mention kubepods or kubelet, a few levels deep.
    """
    layouts = pod_cgroup_layouts(uid)
    for base in _hierarchies(root):
        for layout in layouts:
            if (base / layout).is_dir():
                return "/" + layout
    u = uid.replace("-", "_")

    def is_pod(name: str) -> bool:  # kubepods-pod<u>.slice, kubelet-kubepods-burstable-pod<u>.slice, ...
        return name == f"pod{uid}" or name.endswith(f"-pod{u}.slice")

    for base in _hierarchies(root):
        found = _search(base, is_pod)
        if found is not None:
            return "/" + found.relative_to(base).as_posix()
    return None


def _search(base: Path, is_pod: Callable[[str], bool]) -> Path | None:
    frontier = [base]
    for _ in range(_SEARCH_DEPTH):
        below = []
        for directory in frontier:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if is_pod(entry.name):
                    return Path(entry.path)
                if "kubepods" in entry.name or "kubelet" in entry.name:
                    below.append(Path(entry.path))
        frontier = below
    return None


def cgroup_dir(cgroup: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The directory of `cgroup` (a path as ``/proc/<pid>/cgroup`` shows it) under `root`."""
    relative = cgroup.strip("/")
    for base in _hierarchies(root):
        path = base / relative
        if relative and path.is_dir():
            return path
    return None


def cgroup_pids(cgroup: str, root: Path = CGROUP_ROOT) -> list[int]:
    """Every process in `cgroup` and the cgroups below it (a pod's containers are its children)."""
    directory = cgroup_dir(cgroup, root)
    return sorted(set(_walk_procs(directory))) if directory is not None else []


def _walk_procs(directory: Path) -> Iterator[int]:
    for dirpath, _, files in os.walk(directory):
        if "cgroup.procs" not in files:
            continue
        try:
            text = (Path(dirpath) / "cgroup.procs").read_text()
        except OSError:
            continue  # removed while walking: its processes are gone
        for line in text.split():
            if line.isdigit():
                yield int(line)


def signal_cgroup(cgroup: str, sig: int, root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> list[int]:
    """Send `sig` to every process in `cgroup` (see `cgroup_pids`); returns the pids signalled.

    Each process is held by a pidfd while its own ``/proc/<pid>/cgroup`` is checked to be in
    `cgroup`, then signalled through that pidfd: a pid reused since ``cgroup.procs`` was read names
    another process, which the check refuses, and the pidfd cannot reach a later one.
    """
    sent = []
    for pid in cgroup_pids(cgroup, root):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone (or not ours to see)
        try:
            current = read_cgroup(pid, proc)
            if current is None or not _contains(cgroup, current):
                log.info("pid %d listed in %s lives in %s now: not signalled", pid, cgroup, current)
                continue
            signal.pidfd_send_signal(fd, sig)
            sent.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
        finally:
            os.close(fd)
    return sent
