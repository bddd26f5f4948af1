"""Per-node filter results for one pending job: what `tessera explain JOB` shows.

For every node: could it take the job's tasks right now, how many of them, and
if not, the first filter each failing task trips (NotReady, host CPU, host memory,
GPU model, MIG, whole GPUs, GPU memory/compute). Whether a task fits is decided by
the scheduler's own rules (:mod:`tessera.scheduler.placement`); this module only
words the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import NodeState, PendingJob, Snapshot
from tessera.scheduler.placement import WorkNode, Workspace, pick_gpus


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
    work = Workspace([node], empty=False).nodes[0]
    fit, reasons = 0, []
    for task in job.tasks:
        r = task.resources
        gpus = pick_gpus(work, r)
        if gpus is not None and work.holds_host(r):
            fit += 1
            work.used_cpu += r.cpu
            work.used_memory_mib += r.memory
            for gpu, memory, compute in gpus:
                gpu.used_memory_mib += memory
                gpu.used_compute_pct += compute
            continue
        why = _why(r, work)
        reasons.append(f"{task.label}: {why}" if len(job.tasks) > 1 else why)
    return NodeVerdict(node.name, True, fit, tuple(dict.fromkeys(reasons)))


def _why(r: Resources, node: WorkNode) -> str:
    """The first filter a task that does not fit trips on this node, in words."""
    cpu_left = node.cpu - node.used_cpu
    if node.used_cpu + r.cpu > node.cpu + 1e-6:
        return f"host cpu: needs {r.cpu:g}, {max(cpu_left, 0):g} free"
    mem_left = node.memory_mib - node.used_memory_mib
    if r.memory > mem_left:
        return f"host memory: needs {format_mib(r.memory)}, {format_mib(max(mem_left, 0))} free"
    if r.kind is GpuKind.MIG:
        same = [i for g in node.gpus for i in g.instances if i.model == r.mig_profile]
        if not same:
            offered = sorted({i.model for g in node.gpus for i in g.instances}) or "none"
            return f"MIG: no instance of profile {r.mig_profile} (profiles here: {offered})"
        return f"MIG: all {len(same)} instances of profile {r.mig_profile} are taken"
    if not any(r.fits_model(g.model) for g in node.gpus):
        return f"GPU model: wants {r.gpu_models}, node has {sorted({g.model for g in node.gpus}) or 'none'}"
    usable = [g for g in node.gpus if g.serves(r)]
    if r.kind is GpuKind.WHOLE:
        return f"whole GPUs: needs {r.gpu_count} idle, {sum(g.idle for g in usable)} idle"
    if not usable:
        return "no GPU on this node outside MIG mode"
    g = usable[0]
    memory, compute = r.demand_on(g.memory_mib)
    return (
        f"GPU {g.index}: needs {format_mib(memory)} / {compute:g}%, "
        f"{format_mib(g.memory_mib - g.used_memory_mib)} / {100 - g.used_compute_pct:g}% free"
    )
