"""Attribution by cgroup, for nodes where the kubelet starts tasks (Kubernetes): no shim is a task's
parent there, but every container of a pod lives under the pod's cgroup.

A slice names the cgroup of its pod (for example ``/kubepods.slice/.../kubepods-pod<uid>.slice``,
or the cgroup v1 form ``/kubepods/burstable/pod<uid>``); a process belongs to the slice whose cgroup
contains the process's own cgroup (the path itself or one below it). A process's cgroup is read from
``/proc/<pid>/cgroup``: on a v1 or hybrid host the line of a controller the kubelet always sets
(``memory``, ``cpu``, ``pids``: on a hybrid host the unified line is systemd's, not the kubelet's),
else the unified (v2) line ``0::/path``. As with the shim tree, ``TESSERA_SLICE_ID`` in the
environment never decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_V1_CONTROLLERS = ("memory", "cpu,cpuacct", "cpu", "pids")


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
    return parent == "/" or child == parent or child.startswith(parent + "/")


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
