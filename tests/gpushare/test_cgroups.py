"""Attribution by cgroup (the Kubernetes path): real processes read from /proc, and the parsing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.gpushare.cgroups import (
    attribute_by_cgroup,
    attribute_live_by_cgroup,
    cgroup_pids,
    find_pod_cgroup,
    parse_cgroup,
    read_cgroup,
    signal_cgroup,
)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    # it claims another slice in its environment: that must not matter
    env = {**os.environ, "TESSERA_SLICE_ID": "someone-else"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_process_belongs_to_the_slice_whose_pod_cgroup_holds_it(child: subprocess.Popen[bytes]) -> None:
    mine = read_cgroup(os.getpid())
    assert mine is not None and mine.startswith("/")
    slices = {"ours": mine, "other": "/kubepods/burstable/pod-not-here"}
    [verdict] = attribute_live_by_cgroup([child.pid], slices)
    assert verdict.slice_id == "ours" and verdict.cgroup == mine
    [alone] = attribute_live_by_cgroup([child.pid], {"other": "/kubepods/burstable/pod-not-here"})
    assert not alone.attributed
    child.kill()
    child.wait()
    [gone] = attribute_live_by_cgroup([child.pid], slices)
    assert gone.cgroup is None and not gone.attributed


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            "0::/kubepods.slice/kubepods-podabc.slice/cri-containerd-1.scope\n",
            "/kubepods.slice/kubepods-podabc.slice/cri-containerd-1.scope",
        ),
        (
            "12:pids:/kubepods/burstable/podabc/c1\n4:memory:/kubepods/burstable/podabc/c1\n",
            "/kubepods/burstable/podabc/c1",
        ),
        ("3:cpu,cpuacct:/kubepods/podx/c\n", "/kubepods/podx/c"),
        ("4:memory:/kubepods/pody/c\n0::/system.slice/kubelet.service\n", "/kubepods/pody/c"),
        ("garbage\n", None),
    ],
    ids=["v2", "v1-memory", "v1-cpu", "hybrid", "unreadable"],
)
def test_parse(text: str, path: str | None) -> None:
    assert parse_cgroup(text) == path


def test_containment_is_by_path_component_and_deepest_wins() -> None:
    slices = {"a": "/kubepods/pod1", "b": "/kubepods/pod10", "outer": "/kubepods"}
    cgroups = {
        1: "/kubepods/pod1/c",
        2: "/kubepods/pod10/c",
        3: "/kubepods/pod2/c",
        4: "/system.slice/x",
        5: None,
    }
    verdicts = {v.pid: v.slice_id for v in attribute_by_cgroup([1, 2, 3, 4, 5], slices, cgroups)}
    assert verdicts == {1: "a", 2: "b", 3: "outer", 4: None, 5: None}


# finding a pod's cgroup, and stopping everything in it -------------------------------------------

UID = "3f1c2a9e-7b4d-4e8a-9c1d-0a2b3c4d5e6f"
U_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice", None),
        (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice", None),
        (f"kubepods.slice/kubepods-pod{U_}.slice", None),
        (f"kubepods/besteffort/pod{UID}", None),
        (f"kubepods/burstable/pod{UID}", None),
        (f"kubepods/pod{UID}", None),
        # cgroup v1: the same paths under each controller; /proc/<pid>/cgroup shows them without it
        (f"memory/kubepods/burstable/pod{UID}", f"/kubepods/burstable/pod{UID}"),
        (f"cpu,cpuacct/kubepods/pod{UID}", f"/kubepods/pod{UID}"),
        (
            f"memory/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice",
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice",
        ),
        # a kubelet with --cgroup-root=/kubelet (kind): found by a search of kube-named directories
        (
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{U_}.slice",
            None,
        ),
    ],
    ids=[
        "v2-systemd-besteffort",
        "v2-systemd-burstable",
        "v2-systemd-guaranteed",
        "v2-cgroupfs-besteffort",
        "v2-cgroupfs-burstable",
        "v2-cgroupfs-guaranteed",
        "v1-cgroupfs-memory",
        "v1-cgroupfs-cpu",
        "v1-systemd-memory",
        "kind",
    ],
)
def test_find_pod_cgroup_in_every_kubelet_layout(tmp_path: Path, layout: str, expected: str | None) -> None:
    (tmp_path / layout / "cri-containerd-abc.scope").mkdir(parents=True)
    # other pods and the system's own cgroups around it
    (tmp_path / "system.slice/kubelet.service").mkdir(parents=True)
    other = layout.replace(U_, "0" * len(U_)).replace(UID, "1" * len(UID))
    (tmp_path / other).mkdir(parents=True)
    found = find_pod_cgroup(UID, tmp_path)
    assert found == (expected or "/" + layout)
    # what a process of one of its containers shows in /proc/<pid>/cgroup is inside it
    [verdict] = attribute_by_cgroup([7], {"s": found}, {7: f"{found}/cri-containerd-abc.scope"})
    assert verdict.slice_id == "s"


def test_find_pod_cgroup_is_none_until_the_kubelet_makes_it(tmp_path: Path) -> None:
    (tmp_path / "kubepods.slice/kubepods-besteffort.slice").mkdir(parents=True)
    (tmp_path / "kubepods.slice/kubepods-pod-not-this-one.slice").mkdir()
    assert find_pod_cgroup(UID, tmp_path) is None
    assert find_pod_cgroup(UID, tmp_path / "nowhere") is None


def test_a_cgroup_seen_from_another_cgroup_namespace_is_matched_by_what_it_shows() -> None:
    """An agent in a container with its own cgroup namespace sees other pods' cgroups as
    ``/../..`` and down: the pod's own directory (its uid) decides."""
    pod = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice"
    neighbour = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0_1.slice"
    cgroups = {
        1: f"/../../kubepods-besteffort-pod{U_}.slice/cri-containerd-1.scope",
        2: f"/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/c.scope",
        3: "/../../kubepods-besteffort-pod0_1.slice/c.scope",
        4: "/../../kubepods-besteffort.slice/c.scope",
        5: "/",
    }
    verdicts = {
        v.pid: v.slice_id
        for v in attribute_by_cgroup([1, 2, 3, 4, 5], {"ours": pod, "theirs": neighbour}, cgroups)
    }
    assert verdicts == {1: "ours", 2: "ours", 3: "theirs", 4: None, 5: None}


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_signal_cgroup_reaches_every_process_listed_in_the_pod_and_only_those(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """A fake cgroup tree lists real processes (`sleep`); a fake /proc says which cgroup each is in.
    The two containers' processes get the signal; a pid listed there that now lives elsewhere (its
    pid reused, say) does not."""
    first, second, moved = sleepers
    pod = f"/kubepods/burstable/pod{UID}"
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    for container, pids in (("c1", [first.pid, moved.pid]), ("c2", [second.pid])):
        (root / pod.strip("/") / container).mkdir(parents=True)
        (root / pod.strip("/") / container / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    (root / pod.strip("/") / "cgroup.procs").write_text("")  # v2: no process in the pod's own cgroup
    for p, where in ((first, f"{pod}/c1"), (second, f"{pod}/c2"), (moved, "/system.slice/other")):
        (proc / str(p.pid)).mkdir(parents=True)
        (proc / str(p.pid) / "cgroup").write_text(f"0::{where}\n")
    assert cgroup_pids(pod, root) == sorted([first.pid, second.pid, moved.pid])
    assert sorted(signal_cgroup(pod, signal.SIGTERM, root, proc)) == sorted([first.pid, second.pid])
    assert first.wait(5) == -signal.SIGTERM and second.wait(5) == -signal.SIGTERM
    assert moved.poll() is None
    # a cgroup that does not exist (the pod is gone), or the whole hierarchy, signals nothing
    assert signal_cgroup(f"/kubepods/burstable/pod{'0' * 8}", signal.SIGKILL, root, proc) == []
    assert signal_cgroup("/", signal.SIGKILL, root, proc) == [] and moved.poll() is None
