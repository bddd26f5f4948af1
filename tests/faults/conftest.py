"""The fault suite: real processes (`tessera up`, node agents, shims, PostgreSQL) broken by real
signals. Each test starts its own control plane; all of them share one xdist group so that a
parallel run (`make test`) never runs two of them at once on a small machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultCluster


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.nodeid.startswith("tests/faults/"):
            item.add_marker(pytest.mark.xdist_group("faults"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    """`tessera up` on SQLite with its own agent (2 simulated GPUs); `tessera admin check` must pass
    after the test, whatever it broke."""
    c = FaultCluster(home=tmp_path / "home").start()
    try:
        yield c
        c.assert_consistent()
    finally:
        c.stop()
