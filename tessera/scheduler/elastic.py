"""Step 6 of a cycle: elastic jobs grow into free room and give it back first.

An elastic job's gang is its ``min_workers``; every slice beyond that is an
*extra*, granted only from room nobody pending could use this cycle (grants
run after every pending job had its turn, and room held for preemptors or
reservations is not free). Extras are the cheapest thing to take back: before
a pending job evicts any whole gang (step 4), the extras of other running
elastic jobs are released, lowest priority and newest first, one at a time
until the job fits. Fewer extras than would help are never taken. A job is
never shrunk below its gang, and a shrink is not a preemption: the job keeps
running and Ray Train carries on with fewer workers.

Why this does not flap: a job whose room came from extras waits
(``Preempting``) until they are released, so it never takes more; grants use
only room left free after every pending job, so a grant never takes room a
pending job could have used this cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tessera.scheduler.model import Amounts, RunningJob, SlicePlacement, TaskRequest
from tessera.scheduler.quota import gpu_charge


@dataclass(frozen=True, slots=True)
class Extra:
    """One extra slice of a running elastic job: the task, what it holds, and its quota charge."""

    job: RunningJob
    task: TaskRequest
    placements: tuple[SlicePlacement, ...]
    charge: Amounts

    @property
    def host(self) -> list[tuple[str, float, int]]:
        node = self.placements[0].node if self.placements else ""
        return [(node, self.task.resources.cpu, self.task.resources.memory)] if node else []


def extras(running: list[RunningJob], gpu_memory: Mapping[str, int]) -> list[Extra]:
    """Every extra slice in the order they are given back: lowest priority, newest job, newest grant."""
    out = []
    elastic = [j for j in running if j.elastic is not None and j.elastic.extras]
    for job in sorted(elastic, key=lambda j: (j.priority, -j.started_at.timestamp(), j.job_id)):
        assert job.elastic is not None
        for task in job.elastic.extras:
            held = tuple(p for p in job.placements if p.task_id == task.task_id)
            if not held:
                continue
            charge = Amounts(gpu_charge(held, gpu_memory), task.resources.cpu, float(task.resources.memory))
            out.append(Extra(job, task, held, charge))
    return out


def growable(running: list[RunningJob]) -> list[RunningJob]:
    """Elastic jobs below max_workers, in the order they are offered room: priority, then oldest."""
    jobs = [j for j in running if j.elastic is not None and j.elastic.growable]
    return sorted(jobs, key=lambda j: (-j.priority, j.started_at.timestamp(), j.job_id))


def shrink_message(taken: list[Extra], for_name: str) -> str:
    count = len(taken)
    workers = f"{count} extra worker{'s' if count != 1 else ''}"
    return f"gives back {workers} ({', '.join(e.task.label for e in taken)}) for job '{for_name}'"


def by_job(taken: list[Extra]) -> Iterator[tuple[RunningJob, tuple[uuid.UUID, ...]]]:
    jobs: dict[uuid.UUID, list[Extra]] = {}
    for extra in taken:
        jobs.setdefault(extra.job.job_id, []).append(extra)
    for group in jobs.values():
        yield group[0].job, tuple(e.task.task_id for e in group)
