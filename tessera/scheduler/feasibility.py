"""Could any registered node ever hold this task, with the whole cluster empty?

Used at submit: a task no node could ever hold is refused (422) once a node has
registered. Gangs larger than the cluster are not refused here; they wait.
"""

from __future__ import annotations

from tessera.api.cluster import Gpu, NodeInventory
from tessera.api.common import MemoryMiB
from tessera.api.quantities import format_mib
from tessera.api.resources import GpuKind, Resources


def _gpu_holds(resources: Resources, gpu: Gpu) -> bool:
    if not resources.fits_model(gpu.model):
        return False
    kind = resources.kind
    if kind is GpuKind.MIG:
        return gpu.mig_mode and any(m.profile == resources.mig_profile for m in gpu.mig_instances)
    if gpu.mig_mode:
        return False
    memory, compute = resources.demand_on(gpu.memory_mib)
    return memory <= gpu.memory_mib and compute <= 100


def node_holds(resources: Resources, node: NodeInventory) -> bool:
    """Whether an empty node could hold one task with these resources."""
    if resources.cpu > node.cpu or resources.memory > node.memory:
        return False
    if resources.kind is GpuKind.NONE:
        return True
    fitting = sum(1 for gpu in node.gpus if _gpu_holds(resources, gpu))
    return fitting >= resources.gpu_count


def _tasks_on_gpu(resources: Resources, gpu: Gpu) -> int:
    """How many one-GPU tasks of this size an empty GPU holds at once."""
    if not _gpu_holds(resources, gpu):
        return 0
    if resources.kind is GpuKind.MIG:
        return sum(1 for m in gpu.mig_instances if m.profile == resources.mig_profile)
    if resources.kind not in (GpuKind.SLICE, GpuKind.FRACTION):
        return 1
    memory, compute = resources.demand_on(gpu.memory_mib)
    by_memory = gpu.memory_mib // memory if memory else 10_000
    by_compute = int(100 // compute) if compute else 10_000
    return int(min(by_memory, by_compute))


def node_capacity(resources: Resources, node: NodeInventory) -> int:
    """How many tasks of this size an empty node holds at once (its CPU, memory and GPUs)."""
    limits = []
    if resources.cpu > 0:
        limits.append(int(node.cpu // resources.cpu))
    if resources.memory > 0:
        limits.append(int(node.memory // resources.memory))
    if resources.kind is not GpuKind.NONE:
        per_gpu = [_tasks_on_gpu(resources, gpu) for gpu in node.gpus]
        # whole GPUs may be several per task; every other kind is one slice of one GPU
        limits.append(sum(per_gpu) // max(1, resources.gpu_count))
    return min(limits) if limits else 10_000


def cluster_holds(resources: Resources, nodes: list[NodeInventory]) -> int:
    """How many tasks of this size the whole cluster, emptied, could hold at once."""
    return sum(node_capacity(resources, node) for node in nodes)


def why_unplaceable(resources: Resources, nodes: list[NodeInventory]) -> str | None:
    """None if some node could hold the task; else a message naming what is missing."""
    if any(node_holds(resources, node) for node in nodes):
        return None
    gpus = [g for n in nodes for g in n.gpus]
    kind = resources.kind
    if kind is GpuKind.MIG:
        profiles = sorted({m.profile for g in gpus for m in g.mig_instances})
        return f"no node offers MIG profile {resources.mig_profile!r} (offered: {profiles or 'none'})"
    if kind is not GpuKind.NONE:
        models = sorted({g.model for g in gpus})
        if resources.gpu_models and not any(resources.fits_model(m) for m in models):
            return f"no node has a GPU of model {resources.gpu_models} (models: {models or 'none'})"
        if kind is GpuKind.SLICE and resources.gpu_memory is not None:
            largest: MemoryMiB = max((g.memory_mib for g in gpus), default=0)
            if resources.gpu_memory > largest:
                return (
                    f"gpu_memory {format_mib(resources.gpu_memory)} exceeds the largest GPU "
                    f"({format_mib(largest)})"
                )
        most = max((len(n.gpus) for n in nodes), default=0)
        if resources.gpu_count > most:
            return f"{resources.gpu_count} GPUs per task, but no node has more than {most}"
    most_cpu = max((n.cpu for n in nodes), default=0)
    if resources.cpu > most_cpu:
        return f"cpu {resources.cpu:g} exceeds every node (largest: {most_cpu:g})"
    most_mem = max((n.memory for n in nodes), default=0)
    if resources.memory > most_mem:
        return f"memory {format_mib(resources.memory)} exceeds every node (largest: {format_mib(most_mem)})"
    return "no single node has all of this task's resources at once"
