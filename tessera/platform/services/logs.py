"""Where a task's logs live: the agent of the node that ran its latest attempt."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tessera.api.jobs import JobSpec
from tessera.platform.auth import Principal
from tessera.platform.problems import Invalid, NotFound, Unavailable
from tessera.platform.services.jobs import find_job
from tessera.platform.store.db import Database
from tessera.platform.store.rows import NodeRow, TaskRow


@dataclass(frozen=True)
class LogTarget:
    agent_url: str
    agent_secret: str
    path: str  # on the agent: /jobs/<job_id>/tasks/<task_id>-a<attempt>/logs


@dataclass(frozen=True)
class PodLogTarget:
    """On Kubernetes: the task attempt's pod, found by its labels; its log comes from the API server."""

    task_id: str
    attempt: int


def log_target(
    db: Database,
    caller: Principal,
    ref: str,
    project: str,
    group: str | None,
    index: int,
    pods: bool = False,
) -> LogTarget | PodLogTarget:
    with db.read() as session:
        job = find_job(session, caller, ref, project)
        spec = JobSpec.model_validate(job.spec)
        group_name = group or spec.groups[0].name
        task = session.execute(
            select(TaskRow).where(
                TaskRow.job_id == job.id, TaskRow.group_name == group_name, TaskRow.index == index
            )
        ).scalar_one_or_none()
        if task is None:
            groups = {g.name: g.replicas for g in spec.groups}
            raise Invalid(
                f"job {job.name!r} has no task {group_name}-{index}; its groups are "
                f"{groups} (index counts from 0)",
                field="index",
            )
        if task.node is None:
            raise NotFound(
                f"task {group_name}-{index} of job {job.name!r} has not been placed on a "
                "node yet, so it has no logs",
                field="index",
            )
        node = session.execute(select(NodeRow).where(NodeRow.name == task.node)).scalar_one_or_none()
        if pods:  # on Kubernetes the kubelet keeps every task's log (the agent serves none)
            return PodLogTarget(task_id=str(task.id), attempt=task.attempt)
        if node is None or not node.agent_url or not node.agent_secret:
            raise Unavailable(f"node {task.node!r} that ran the task is gone or serves no logs")
        return LogTarget(
            agent_url=node.agent_url,
            agent_secret=node.agent_secret,
            path=f"/jobs/{job.id}/tasks/{task.id}-a{task.attempt}/logs",
        )
