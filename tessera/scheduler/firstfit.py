"""First-fit gang scheduler: the simplest correct policy, and the baseline others are measured against.

Jobs are taken by priority (then submit time, then id). Each job's tasks are
placed all-or-nothing onto the first Ready node (by name) and first GPUs (by
index) that have room. Capacity is never over-committed: per GPU, memory and
compute each stay within the device; per node, CPU and memory likewise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from tessera.api.jobs import PendingReason
from tessera.scheduler.freeindex import EMPTY, LIVE, plural
from tessera.scheduler.model import (
    GANG_TOO_LARGE,
    NO_NODES,
    NO_NODES_MESSAGE,
    NO_READY_NODES,
    NO_READY_NODES_MESSAGE,
    UNSCHEDULABLE,
    Bind,
    Decisions,
    PendingJob,
    Snapshot,
)
from tessera.scheduler.placement import Workspace, shortage


def _order(pending: Iterable[PendingJob]) -> list[PendingJob]:
    return sorted(pending, key=lambda j: (-j.priority, j.submitted_at, j.job_id))


class FirstFit:
    """First-fit, all-or-nothing gang scheduler (see the module docstring)."""

    name = "firstfit"

    def cycle(self, snapshot: Snapshot) -> Decisions:
        """Place pending jobs in priority order; every job not bound gets a reason."""
        jobs = _order(snapshot.pending)
        if not snapshot.nodes:
            return _all_waiting(jobs, NO_NODES, NO_NODES_MESSAGE)
        if not any(n.ready for n in snapshot.nodes):
            return _all_waiting(jobs, NO_READY_NODES, NO_READY_NODES_MESSAGE)

        live = Workspace(snapshot.nodes, empty=False)
        empty: Workspace | None = None  # built on the first failure only; most cycles never need it
        binds: list[Bind] = []
        pending: dict[uuid.UUID, PendingReason] = {}
        for job in jobs:
            mark = live.mark()
            placements, failed = live.place_gang(job.tasks)
            if failed is None:
                binds.append(Bind(job.job_id, tuple(placements)))
                continue
            detail = shortage(live, job.tasks[failed], failed, LIVE)
            live.rollback(mark)

            if empty is None:
                empty = Workspace(snapshot.nodes, empty=True)
            mark = empty.mark()
            _, never = empty.place_gang(job.tasks)
            if never is None:
                reason = PendingReason(code=UNSCHEDULABLE, message=f"waiting for capacity: {detail}")
            else:
                # First fit on the emptied cluster is a sufficient, not exact, test of "never fits":
                # a smarter packing might fit a mix of slices it refuses. It errs towards waiting.
                why = shortage(empty, job.tasks[never], never, EMPTY)
                size = plural(len(job.tasks), "task")
                reason = PendingReason(
                    code=GANG_TOO_LARGE,
                    message=f"gang of {size} needs more than the whole cluster offers: {why}",
                )
            empty.rollback(mark)
            pending[job.job_id] = reason
        return Decisions(binds=tuple(binds), pending=pending)


def _all_waiting(jobs: list[PendingJob], code: str, message: str) -> Decisions:
    reason = PendingReason(code=code, message=message)
    return Decisions(binds=(), pending={job.job_id: reason for job in jobs})
