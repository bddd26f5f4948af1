"""Where a task lands: the placement policies (``policies/``) choosing among the live workspace's nodes.

The policies score every node at once on a numpy :class:`ClusterState`. This module keeps one such
state as a mirror of the workspace's Ready nodes, refreshed row by row as the workspace changes
(placements, releases, rollbacks), and turns a task's request into the policies' terms:

- CPU in milli-CPU, host memory in MiB;
- a GPU's free capacity as a share of the GPU (milli-GPU): the smaller of its free memory share
  and its free compute share, since a share of a GPU takes both;
- a whole-GPU task as ``k x 1000``, a fraction ``f`` as ``1000 f``, a slice as the larger of its
  memory and compute shares on the largest GPU it may use (the least it can take anywhere);
- its GPU model allow-list as the models of the mirror that pass it.

The mirror only ranks. Whether a task fits is decided, exactly, by the workspace's rules
(``pick_gpus``, ``holds_host``) on the node the policy chose, with the policy's GPU for a share if
that GPU holds it exactly, else the node's first fit; a multi-GPU task always takes its GPUs by
topology (``pick_gpus``). If the chosen node does not fit after all, it is masked out and the
policy chooses again. MIG requests are not the policies' business: they take the first free
instance of their profile, first fit.

Data locality: when the job says what fraction of its data each node has cached, the nodes with
the most of it (in steps of a tenth) are preferred; the policy ranks within them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from tessera.api.resources import GpuKind, Resources
from tessera.scheduler.model import RunningJob, SlicePlacement
from tessera.scheduler.placement import WorkGpu, WorkNode, pick_gpus
from tessera.scheduler.policies import ClusterState, PodRequest, Policy, TypicalPod, policy
from tessera.scheduler.policies.fgd import Spec, typical_mix
from tessera.scheduler.policies.state import MILLI

_EPS = 1e-6
_SLACK = 0.01  # milli-units of float error the mirror forgives


class Scorer:
    """A policy-ranked choice of node for each task, over a mirror of the workspace's Ready nodes."""

    def __init__(self, nodes: Sequence[WorkNode], seed: int = 0) -> None:
        self._nodes = list(nodes)
        self._gpus: list[list[WorkGpu]] = [[g for g in n.gpus if not g.mig_mode] for n in self._nodes]
        # one model label per node; a node of mixed models gets "A|B" (ClusterState has one per node)
        models = ["|".join(sorted({g.model for g in gpus})) for gpus in self._gpus]
        self.state = ClusterState.build(
            [n.name for n in self._nodes],
            [round(n.cpu * MILLI) for n in self._nodes],
            [n.memory_mib for n in self._nodes],
            [len(g) for g in self._gpus],
            models,
        )
        # ClusterState orders nodes by name; the workspace's Ready nodes are in name order too
        assert list(self.state.names) == [n.name for n in self._nodes]
        self._largest: dict[str, int] = {}  # per GPU model, the largest memory
        for gpus in self._gpus:
            for g in gpus:
                self._largest[g.model] = max(self._largest.get(g.model, 0), g.memory_mib)
        self._typical = [TypicalPod(MILLI, 0, 0, (), 1)]  # until learn() says what the mix is
        self._seed = seed
        self._policies: dict[str, Policy] = {}
        self.dirty: set[int] = set(range(len(self._nodes)))

    def learn(self, specs: Iterable[tuple[Spec, int]]) -> None:
        """Set the expected mix of task shapes (FGD's typical pods) from the workload's tasks."""
        typical = typical_mix(specs)
        if typical:
            self._typical = typical
            self._policies.clear()

    def spec(self, res: Resources) -> Spec:
        """A task's shape in the mix: (milli-CPU, milli-GPU per GPU, GPUs, allowed models)."""
        pod = self.pod(res)
        return (pod.cpu_milli, pod.gpu_milli, pod.num_gpu, pod.models)

    def policy(self, name: str) -> Policy:
        found = self._policies.get(name)
        if found is None:
            found = self._policies[name] = policy(name, seed=self._seed, typical=self._typical)
        return found

    def _refresh(self) -> None:
        state = self.state
        for i in self.dirty:
            node, gpus = self._nodes[i], self._gpus[i]
            # generous by a hair: the mirror may only rank, never refuse a node that fits exactly
            state.cpu_free[i] = max(0, math.floor((node.cpu - node.used_cpu) * MILLI + _SLACK))
            state.mem_free[i] = max(0, node.memory_mib - node.used_memory_mib)
            total = 0
            for j, g in enumerate(gpus):
                share = min(
                    (g.memory_mib - g.used_memory_mib) / g.memory_mib, (100.0 - g.used_compute_pct) / 100
                )
                free = max(0, math.floor(share * MILLI + _EPS))
                state.gpu_free[i, j] = free
                total += free
            state.gpu_free_total[i] = total
            state.affinity[i, :] = 0
            for cls, tally in (node.tallies or {}).items():
                if 0 <= cls < state.affinity.shape[1]:
                    state.affinity[i, cls] = tally.used_memory_mib
            state.touch(i)
        self.dirty.clear()

    def pod(self, res: Resources) -> PodRequest:
        """The policies' view of one task's request (see the module docstring)."""
        models: tuple[str, ...] = ()
        if res.gpu_models:
            models = tuple(m for m in self.state.model_names if any(res.fits_model(p) for p in m.split("|")))
        # Needs round down and free figures round up (within float error): a necessary condition.
        cpu = math.floor(res.cpu * MILLI + _EPS)
        kind = res.kind
        if kind is GpuKind.WHOLE:
            return PodRequest(cpu, res.memory, res.gpu_count, MILLI, models)
        if kind is GpuKind.FRACTION:
            return PodRequest(cpu, res.memory, 1, max(1, math.floor((res.gpus or 0) * MILLI + _EPS)), models)
        if kind is GpuKind.SLICE:
            sizes = [size for m, size in self._largest.items() if res.fits_model(m) and size > 0]
            memory, compute = res.demand_on(max(sizes)) if sizes else (0, 0.0)
            size = max(sizes) if sizes else 1
            share = max(memory / size, compute / 100)
            return PodRequest(
                cpu, res.memory, 1, min(MILLI, max(1, math.floor(share * MILLI + _EPS))), models
            )
        return PodRequest(cpu, res.memory, 0, 0, ())

    def choose(
        self,
        res: Resources,
        placement: str,
        locality: dict[str, float] | None = None,
        only: frozenset[str] | None = None,
    ) -> tuple[int, list[tuple[WorkGpu, int, float]]] | None:
        """(Ready position, GPUs with memory and compute) for one task, or None if no node fits it.

        ``only``: the nodes it may use at all (required data locality)."""
        self._refresh()
        pod = self.pod(res)
        chooser = self.policy(placement)
        allowed = None if only is None else np.array([n.name in only for n in self._nodes], dtype=bool)
        feasible = self.state.feasible(pod)  # a fresh array: ours to change
        if allowed is not None:
            feasible &= allowed
        if locality:
            feasible = _prefer_local(feasible, [locality.get(n.name, 0.0) for n in self._nodes])
        while feasible.any():
            node = chooser.choose_node(self.state, pod, feasible)
            work = self._nodes[node]
            picks = self._exact(work, res, chooser.choose_gpus(self.state, pod, node), node)
            if picks is not None:
                return node, picks
            feasible[node] = False
            if not feasible.any() and locality:  # the local nodes are out: any other will do
                locality = None
                feasible = self.state.feasible(pod).copy()
                if allowed is not None:
                    feasible &= allowed
                feasible[node] = False
        return None

    def _exact(
        self, work: WorkNode, res: Resources, chosen: tuple[int, ...], node: int
    ) -> list[tuple[WorkGpu, int, float]] | None:
        if not work.holds_host(res):
            return None
        if res.kind in (GpuKind.FRACTION, GpuKind.SLICE) and len(chosen) == 1:
            gpu = self._gpus[node][chosen[0]]
            memory, compute = res.demand_on(gpu.memory_mib)
            if gpu.serves(res) and gpu.holds(memory, compute):
                return [(gpu, memory, compute)]
        return pick_gpus(work, res)


def seed_tallies(nodes: Sequence[WorkNode], running: Iterable[RunningJob]) -> None:
    """Count the placed jobs' tasks per node and request class (what clustering ranks by)."""
    by_name = {n.name: n for n in nodes}
    for job in running:
        by_task: dict[uuid.UUID, list[SlicePlacement]] = {}
        for p in job.placements:
            by_task.setdefault(p.task_id, []).append(p)
        for placements in by_task.values():
            node = by_name.get(placements[0].node)
            gpus = [p for p in placements if p.gpu_uuid]
            if node is None or not gpus:
                continue
            whole = len(gpus) > 1 or (gpus[0].compute_pct >= 100 - _EPS and not gpus[0].mig_uuid)
            node.tally(len(gpus) if whole else 0).used_memory_mib += 1


def running_specs(job: RunningJob, gpu_memory: dict[str, int]) -> list[tuple[Spec, int]]:
    """The shapes of a placed job's tasks, from its placements (what it holds, not what it asked)."""
    by_task: dict[uuid.UUID, list[SlicePlacement]] = {}
    for p in job.placements:
        by_task.setdefault(p.task_id, []).append(p)
    hosts = list(job.host_usage) or [
        ("", job.cpu / max(1, len(by_task)), job.memory_mib // max(1, len(by_task)))
    ]
    out: list[tuple[Spec, int]] = []
    for i, placements in enumerate(by_task.values()):
        _, cpu, memory = hosts[min(i, len(hosts) - 1)]
        gpus = [p for p in placements if p.gpu_uuid and not p.mig_uuid]
        milli = 0
        if gpus:
            p = gpus[0]
            size = gpu_memory.get(p.gpu_uuid or "", 0)
            share = max(p.memory_mib / size if size else 0.0, p.compute_pct / 100)
            milli = min(MILLI, max(1, math.floor(share * MILLI + _EPS)))
        out.append(((math.ceil(cpu * MILLI - _EPS), milli, len(gpus), ()), memory))
    return out


def _prefer_local(feasible: np.ndarray, cached: list[float]) -> np.ndarray:
    """Of the feasible nodes, those with the most of the job's data cached (in tenths), if any."""
    tenths = np.floor(np.asarray(cached, dtype=np.float64) * 10 + _EPS)
    best = tenths[feasible].max() if feasible.any() else 0
    if best <= 0:
        return feasible
    return feasible & (tenths == best)
