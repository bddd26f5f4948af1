"""What `tessera admin check` reports: the store's invariants, and any that do not hold."""

from __future__ import annotations

from pydantic import Field

from tessera.api.common import Model


class CheckProblem(Model):
    kind: str = Field(
        description="overcommit, unknown-gpu, unknown-node, mig-shared, orphan-task, "
        "orphan-allocation, orphan-replica, leaked-slice, running-without-slices, "
        "future-attempt, bad-state"
    )
    object: str = Field(description="What it concerns, e.g. gpu GPU-... on node n1, or job NAME (id).")
    message: str


class CheckReport(Model):
    ok: bool
    checked: dict[str, int] = Field(description="How many of each kind of object were checked.")
    problems: list[CheckProblem] = Field(default_factory=list)
