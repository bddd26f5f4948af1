"""The launch contract: what a task sees when it starts, derived from its job alone.

Both the node agent (to start tasks) and tests use this, so the contract is one
function. A task gets ``CUDA_VISIBLE_DEVICES`` for its GPUs, ``TESSERA_*``
facts about its job and slice (ids, never limits), and torch's distributed
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; rank 0 is the master).

A slice's limits are the node's to enforce, not the task's to honour: they are
not in its environment, so no workload can pass a test by limiting itself. The
node adds what an enforcement tier needs (MPS or HAMi-core settings, the
cooperative torch hook) when it starts the task (`tessera.gpushare.tiers`).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from tessera.api.jobs import Allocation, DataMount, Job, JobState, Task

# job states in which a task of the current attempt should be running on its node
RUN_STATES = frozenset(
    {JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, JobState.RESIZING, JobState.RECOVERING}
)
MASTER_PORT_BASE, MASTER_PORT_SPAN = 29500, 2000


@dataclass(frozen=True)
class TaskLaunch:
    """Everything a node needs to start one task of one attempt."""

    job_id: uuid.UUID
    job_name: str
    task_id: uuid.UUID
    group: str
    index: int
    attempt: int
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    image: str | None
    slices: tuple[Allocation, ...] = ()
    # datasets the node caches before the task starts; TESSERA_DATA_<NAME> points at its copy
    data: tuple[DataMount, ...] = ()

    @property
    def key(self) -> str:
        """Directory name of this task attempt under the agent's state dir."""
        return f"{self.task_id}-a{self.attempt}"


def master_port(job_id: uuid.UUID, attempt: int, taken: Collection[int] = ()) -> int:
    """Rank 0's port for one attempt: a stable start in the range, moving past ports other live jobs
    hold on that node. A new attempt starts elsewhere, so one port another program holds (the
    agent checks before starting rank 0) does not fail every retry."""
    start = zlib.crc32(f"{job_id}:{attempt}".encode()) % MASTER_PORT_SPAN
    for step in range(MASTER_PORT_SPAN):
        port = MASTER_PORT_BASE + (start + step) % MASTER_PORT_SPAN
        if port not in taken:
            return port
    return MASTER_PORT_BASE + start


def launches_for(
    job: Job, node: str, master_addr: str = "127.0.0.1", master_host: str | None = None
) -> list[TaskLaunch]:
    """Tasks of ``job``'s current attempt placed on ``node`` (empty unless it should run).

    ``master_host`` overrides the bound master's address (on Kubernetes: the job's Service)."""
    if job.status.state not in RUN_STATES:
        return []
    attempt = job.status.attempt
    slices: dict[uuid.UUID, list[Allocation]] = {}
    for alloc in job.allocations:
        slices.setdefault(alloc.task_id, []).append(alloc)
    # only tasks bound in this attempt run (a gang smaller than the job leaves some out);
    # ranks count the bound tasks in (group, index) order, rank 0 being the master
    tasks = sorted((t for t in job.tasks if t.id in slices), key=lambda t: (t.group, t.index))
    world = len(tasks)
    # LOCAL_RANK counts the tasks on the same node, in rank order (torchrun's meaning)
    local: dict[uuid.UUID, tuple[int, int]] = {}
    per_node: dict[str | None, list[uuid.UUID]] = {}
    for task in tasks:
        per_node.setdefault(task.node, []).append(task.id)
    for ids in per_node.values():
        for i, task_id in enumerate(ids):
            local[task_id] = (i, len(ids))
    master = job.status.master
    endpoint = (master.address, master.port) if master else (master_addr, master_port(job.id, attempt))
    if master_host is not None:
        endpoint = (master_host, endpoint[1])
    out = []
    for rank, task in enumerate(tasks):
        if task.node != node or task.attempt != attempt:
            continue
        group = next(g for g in job.spec.groups if g.name == task.group)
        env = dict(group.env)
        env.update(
            _contract(job, task, slices.get(task.id, []), node, (rank, world, *local[task.id]), endpoint)
        )
        out.append(
            TaskLaunch(
                job_id=job.id,
                job_name=job.name,
                task_id=task.id,
                group=task.group,
                index=task.index,
                attempt=attempt,
                argv=list(group.command),
                env=env,
                cwd=group.working_dir,
                image=group.image,
                slices=tuple(_gpu_slices(slices.get(task.id, []))),
                data=tuple(job.spec.data),
            )
        )
    return out


def _gpu_slices(allocs: list[Allocation]) -> list[Allocation]:
    """A task's GPU slices in CUDA_VISIBLE_DEVICES order (device ordinal i is the i-th of these)."""
    return sorted((a for a in allocs if a.gpu_uuid), key=lambda a: a.gpu_uuid or "")


def _contract(
    job: Job,
    task: Task,
    allocs: list[Allocation],
    node: str,
    ranks: tuple[int, int, int, int],
    master: tuple[str, int],
) -> dict[str, str]:
    rank, world, local_rank, local_world = ranks
    gpu_allocs = _gpu_slices(allocs)
    env = {
        "TESSERA_JOB_ID": str(job.id),
        "TESSERA_JOB_NAME": job.name,
        "TESSERA_PROJECT": job.project,
        "TESSERA_QUEUE": job.queue,
        "TESSERA_TASK_ID": str(task.id),
        "TESSERA_TASK_GROUP": task.group,
        "TESSERA_TASK_INDEX": str(task.index),
        "TESSERA_ATTEMPT": str(job.status.attempt),
        "TESSERA_NODE": node,
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": master[0],
        "MASTER_PORT": str(master[1]),
    }
    if job.spec.kind == "serve" and job.status.master is not None:
        env["PORT"] = str(master[1])  # a service replica listens here; the gateway sends requests to it
    if allocs:
        env["TESSERA_SLICE_ID"] = ",".join(str(a.id) for a in allocs)
    if job.spec.elastic is not None:  # the per-job Ray cluster: rank 0 is its head (jobs/elastic)
        group = next(g for g in job.spec.groups if g.name == task.group)
        env["TESSERA_ELASTIC"] = job.spec.elastic.model_dump_json()
        env["TESSERA_ELASTIC_ROLE"] = "head" if rank == 0 else "worker"
        env["TESSERA_RAY_ADDRESS"] = f"{master[0]}:{master[1]}"
        if job.status.master is not None and job.status.master.token:
            env["RAY_AUTH_TOKEN"] = job.status.master.token  # every node and the driver present it
        env["TESSERA_TASK_CPUS"] = f"{group.resources.cpu:g}"
        env["TESSERA_TASK_MEMORY_MIB"] = str(group.resources.memory)
    # CUDA_VISIBLE_DEVICES is always set: an empty value hides every GPU from a CPU-only task
    # a MIG instance is addressed by its own UUID (MIG-...), which CUDA accepts in this variable
    env["CUDA_VISIBLE_DEVICES"] = ",".join(a.mig_instance or a.gpu_uuid or "" for a in gpu_allocs)
    if gpu_allocs:
        env["TESSERA_GPU_UUIDS"] = env["CUDA_VISIBLE_DEVICES"]
    return env
