"""Allocate's decisions, free of gRPC: which pod a call is for, and what each of its containers gets.

The kubelet tells Allocate only device ids. Like Alibaba's gpushare and HAMi, the plugin takes the
oldest pod on its node still marked "allocating" (by `tessera.io/bound-at`) whose request of
`tessera.io/slice` equals the number of device ids asked for; the kubelet admits a node's pods one at a
time, so that is the pod it is starting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from tessera.kube import names
from tessera.kube.deviceplugin.pods import PodInfo

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
SLICE_MEMORY = "TESSERA_SLICE_MEMORY_MIB"
SLICE_COMPUTE = "TESSERA_SLICE_COMPUTE_PCT"
# NVIDIA's container runtime reads "void" as no GPU at all; unset, a CUDA image's own "all" would apply
NO_DEVICES = "void"


class BindingError(ValueError):
    """A pod's binding annotation is missing or does not parse."""


# the control plane and the node agent may run different versions during an upgrade: a field added to
# the binding later is ignored here rather than failing every Allocate on older nodes
class SliceBinding(BaseModel):
    """One slice of a pod's binding: a share of one GPU (or a MIG instance)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    gpu_uuid: str | None = None
    mig_instance: str | None = None
    memory_mib: int
    compute_pct: float
    tier: str | None = None

    @property
    def device(self) -> str | None:
        """What NVIDIA_VISIBLE_DEVICES names for this slice: its MIG instance, else its GPU."""
        return self.mig_instance or self.gpu_uuid


class PodBinding(BaseModel):
    """The `tessera.io/binding` annotation: the node, the slices and the extra env the pod gets."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    node: str
    slices: list[SliceBinding] = []
    env: dict[str, str] = {}

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> PodBinding:
        """Parse the binding annotation; raises BindingError naming what is wrong."""
        raw = annotations.get(names.BINDING)
        if raw is None:
            raise BindingError(f"no {names.BINDING} annotation")
        try:
            return cls.model_validate(json.loads(raw))
        except (json.JSONDecodeError, ValidationError) as e:
            raise BindingError(f"{names.BINDING} annotation does not parse: {e}") from e

    def to_annotation(self) -> str:
        """The annotation's value (compact JSON)."""
        return self.model_dump_json()


@dataclass(frozen=True)
class ContainerGrant:
    """What one container of the pod gets from Allocate."""

    envs: dict[str, str]
    annotations: dict[str, str]


def bound_at(pod: PodInfo) -> float:
    """The pod's `tessera.io/bound-at`; a pod without a readable one sorts last."""
    try:
        value = float(pod.annotations.get(names.BOUND_AT, "inf"))
    except ValueError:
        return math.inf
    return value if not math.isnan(value) else math.inf


def pick_pod(pods: Iterable[PodInfo], device_count: int, exclude: Collection[str] = ()) -> PodInfo | None:
    """The oldest pod still "allocating" whose slice request equals `device_count`, or None.

    `exclude` holds uids already handed out whose "allocated" mark the source may not show yet.
    Ties on bound-at break on namespace, then name.
    """
    candidates = [
        p
        for p in pods
        if p.annotations.get(names.ALLOCATION) == names.ALLOCATING
        and p.slice_count == device_count
        and p.uid not in exclude
    ]
    return min(candidates, key=lambda p: (bound_at(p), p.namespace, p.name), default=None)


def slice_env(slices: Sequence[SliceBinding]) -> dict[str, str]:
    """The device and limit variables for `slices`; per-slice values are comma-joined in one order."""
    gpu_slices = [s for s in slices if s.device]
    if not gpu_slices:
        return {VISIBLE_DEVICES: NO_DEVICES}
    return {
        VISIBLE_DEVICES: ",".join(s.device or "" for s in gpu_slices),
        SLICE_MEMORY: ",".join(str(s.memory_mib) for s in gpu_slices),
        SLICE_COMPUTE: ",".join(f"{s.compute_pct:g}" for s in gpu_slices),
    }


def container_grants(binding: PodBinding, device_counts: Sequence[int]) -> list[ContainerGrant]:
    """One grant per container request, in order.

    When the binding has one slice per device asked for, each container gets the next slices in
    order (as many as its devices); otherwise every container gets all of the pod's slices. The
    binding's env comes first, so the slice variables are the ones the plugin computed.
    """
    split = len(binding.slices) == sum(device_counts)
    annotations = {names.BINDING: binding.to_annotation()}
    grants = []
    start = 0
    for count in device_counts:
        slices = binding.slices[start : start + count] if split else binding.slices
        start += count
        grants.append(ContainerGrant(envs={**binding.env, **slice_env(slices)}, annotations=annotations))
    return grants
