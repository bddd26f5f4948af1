"""Per-node filter results for one pending job: what `tessera explain JOB` shows.

For every node: could it take the job's tasks right now, how many of them, and
if not, the first filter each failing task trips (NotReady, GPU model, MIG,
whole GPUs, GPU memory, GPU compute, host CPU, host memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import COMPUTE_EPSILON, NodeState, PendingJob, Snapshot


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    node: str
    ready: bool
    tasks_that_fit: int  # of the job's tasks, placed one after another on this node alone
    reasons: tuple[str, ...]  # why the others do not (deduplicated, in task order)


def explain(snapshot: Snapshot, job: PendingJob) -> list[NodeVerdict]:
    """Verdicts for every node, most accommodating first (then by name)."""
    verdicts = [_node_verdict(node, job) for node in snapshot.nodes]
    return sorted(verdicts, key=lambda v: (-v.tasks_that_fit, v.node))


def _node_verdict(node: NodeState, job: PendingJob) -> NodeVerdict:
    if not node.ready:
        return NodeVerdict(node.name, False, 0, ("node is NotReady",))
    free_mem = {g.uuid: g.free_memory_mib for g in node.gpus}
    free_pct = {g.uuid: g.free_compute_pct for g in node.gpus}
    idle = {g.uuid for g in node.gpus if g.idle}
    cpu_left = node.cpu - node.used_cpu
    mem_left = node.memory_mib - node.used_memory_mib
    fit, reasons = 0, []
    for task in job.tasks:
        why = _take(task.resources, node, free_mem, free_pct, idle, cpu_left, mem_left)
        if why is None:
            fit += 1
            cpu_left -= task.resources.cpu
            mem_left -= task.resources.memory
        elif why not in reasons:
            reasons.append(f"{task.label}: {why}" if len(job.tasks) > 1 else why)
    return NodeVerdict(node.name, True, fit, tuple(dict.fromkeys(reasons)))


def _take(
    r: Resources,
    node: NodeState,
    free_mem: dict[str, int],
    free_pct: dict[str, float],
    idle: set[str],
    cpu_left: float,
    mem_left: float,
) -> str | None:
    """Reserve room for one task in the working figures; None on success, else why not."""
    if r.cpu > cpu_left + COMPUTE_EPSILON:
        return f"host cpu: needs {r.cpu:g}, {max(cpu_left, 0):g} free"
    if r.memory > mem_left:
        return f"host memory: needs {format_mib(r.memory)}, {format_mib(max(int(mem_left), 0))} free"
    kind = r.kind
    if kind is GpuKind.NONE:
        return None
    gpus = [g for g in node.gpus if r.fits_model(g.model)]
    if not gpus:
        return f"GPU model: wants {r.gpu_models}, node has {sorted({g.model for g in node.gpus}) or 'none'}"
    if kind is GpuKind.MIG:
        return "MIG placement is not supported by this scheduler yet"
    gpus = [g for g in gpus if not g.mig_mode]
    if kind is GpuKind.WHOLE:
        free = [g for g in gpus if g.uuid in idle]
        if len(free) < r.gpu_count:
            return f"whole GPUs: needs {r.gpu_count} idle, {len(free)} idle"
        for g in free[: r.gpu_count]:
            idle.discard(g.uuid)
            free_mem[g.uuid], free_pct[g.uuid] = 0, 0.0
        return None
    best = ""
    for g in gpus:
        memory, compute = r.demand_on(g.memory_mib)
        if memory <= free_mem[g.uuid] and compute <= free_pct[g.uuid] + COMPUTE_EPSILON:
            free_mem[g.uuid] -= memory
            free_pct[g.uuid] -= compute
            idle.discard(g.uuid)
            return None
        best = best or (
            f"GPU {g.index}: needs {format_mib(memory)} / {compute:g}%, "
            f"{format_mib(free_mem[g.uuid])} / {free_pct[g.uuid]:g}% free"
        )
    return best or "no GPU on this node"
