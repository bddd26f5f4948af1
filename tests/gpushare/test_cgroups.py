"""Attribution by cgroup (the Kubernetes path): real processes read from /proc, and the parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tessera.gpushare.cgroups import attribute_by_cgroup, attribute_live_by_cgroup, parse_cgroup, read_cgroup


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
