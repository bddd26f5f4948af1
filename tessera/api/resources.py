"""Resource requests: GPU forms (whole, fraction, slice, MIG), CPU and memory.

A slice asks for ``gpu_memory`` and/or ``gpu_compute``; the missing one
defaults to the same share, of the GPU the slice lands on, as the other. So a
slice's demand is only known per candidate GPU: :meth:`GpuRequest.demand_on`.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from tessera.api.common import MemoryMiB, Model

MIG_FORM = "a MIG profile like 1g.10gb, 3g.40gb or 1g.10gb+me"
_MIG = re.compile(r"^[1-7]g\.\d+gb(\+me)?$")


def mig_share(profile: str) -> float:
    """Compute share of a MIG profile: its GPU slices out of 7 (A100, H100, H200; an A30 has 4)."""
    return int(profile.split("g.", 1)[0]) / 7


CPU_FORM = "cores like 2 or 0.5, or millicores like 500m"


class GpuKind(enum.StrEnum):
    NONE = "none"
    WHOLE = "whole"
    FRACTION = "fraction"
    SLICE = "slice"
    MIG = "mig"


def _cpu(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("m"):
                return int(text[:-1]) / 1000
            return float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not {CPU_FORM}") from None
    return value


Cpu = Annotated[float, BeforeValidator(_cpu), Field(ge=0, le=4096)]


class GpuRequest(Model):
    """What one task asks of GPUs. At most one form: whole/fraction, slice, or MIG."""

    gpus: float | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Whole GPUs (an integer >= 1) or a fraction in (0, 1) of one GPU's memory and compute.",
    )
    gpu_memory: MemoryMiB | None = Field(default=None, description="Slice memory, e.g. 4Gi. Stored in MiB.")
    gpu_compute: int | None = Field(
        default=None, ge=1, le=100, description="Slice compute share in percent of one GPU, 1..100."
    )
    mig_profile: str | None = Field(default=None, description="A MIG profile, e.g. 1g.10gb.")
    gpu_models: list[str] = Field(
        default_factory=list,
        description="Allow-list of GPU models (case-insensitive substring, e.g. A100, H200).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> GpuRequest:
        if self.gpu_memory is not None and self.gpu_memory == 0:
            raise ValueError("gpu_memory must be positive, e.g. 512Mi or 4Gi")
        if self.mig_profile is not None and not _MIG.match(self.mig_profile):
            raise ValueError(f"mig_profile {self.mig_profile!r} is not {MIG_FORM}")
        is_slice = self.gpu_memory is not None or self.gpu_compute is not None
        if self.gpus is not None:
            if self.gpus == 0:
                raise ValueError("gpus must be > 0: whole GPUs (1, 2, ...) or a fraction like 0.5")
            if self.gpus > 1 and not float(self.gpus).is_integer():
                raise ValueError(
                    "gpus above 1 must be whole GPUs (1, 2, ...); use 0 < gpus < 1 for a fraction of one GPU"
                )
            if is_slice:
                raise ValueError(
                    "gpus cannot be combined with gpu_memory/gpu_compute: use "
                    "gpus for whole GPUs or a fraction, or a slice by memory/compute"
                )
        if self.mig_profile is not None and (is_slice or self.gpus is not None):
            raise ValueError("mig_profile cannot be combined with gpus, gpu_memory or gpu_compute")
        return self

    @property
    def kind(self) -> GpuKind:
        if self.mig_profile is not None:
            return GpuKind.MIG
        if self.gpu_memory is not None or self.gpu_compute is not None:
            return GpuKind.SLICE
        if self.gpus is None:
            return GpuKind.NONE
        return GpuKind.WHOLE if self.gpus >= 1 else GpuKind.FRACTION

    @property
    def gpu_count(self) -> int:
        """Number of GPUs (or GPU slices) one task occupies."""
        kind = self.kind
        if kind is GpuKind.NONE:
            return 0
        if kind is GpuKind.WHOLE:
            return int(self.gpus or 0)
        return 1

    def demand_on(self, gpu_memory_mib: int) -> tuple[int, float]:
        """(memory MiB, compute percent) this request takes on a GPU of that size.

        Whole GPUs take all of each; the missing half of a slice takes the
        same share as the given half. MIG requests take a MIG instance, not a
        share, and report (0, 0) here.
        """
        kind = self.kind
        if kind is GpuKind.WHOLE:
            return gpu_memory_mib, 100.0
        if kind is GpuKind.FRACTION:
            share = float(self.gpus or 0)
            return math.ceil(share * gpu_memory_mib), share * 100
        if kind is GpuKind.SLICE:
            if self.gpu_memory is not None and self.gpu_compute is not None:
                return self.gpu_memory, float(self.gpu_compute)
            if self.gpu_memory is not None:
                return self.gpu_memory, min(100.0, 100.0 * self.gpu_memory / gpu_memory_mib)
            share = (self.gpu_compute or 0) / 100
            return math.ceil(share * gpu_memory_mib), float(self.gpu_compute or 0)
        return 0, 0.0

    @property
    def mig_share(self) -> float:
        """The share of a GPU's compute a MIG profile takes: ``3g.40gb`` is 3 of 7 slices."""
        return mig_share(self.mig_profile) if self.mig_profile else 0.0

    def charge_on(self, gpu_memory_mib: int) -> float:
        """GPU-equivalents this request is charged on a GPU: max(memory, compute) share."""
        if self.kind is GpuKind.WHOLE:
            return float(self.gpu_count)
        memory, compute = self.demand_on(gpu_memory_mib)
        return max(memory / gpu_memory_mib, compute / 100) if gpu_memory_mib else 0.0

    def fits_model(self, model: str) -> bool:
        """Whether a GPU model passes the allow-list (empty list: any model)."""
        if not self.gpu_models:
            return True
        lowered = model.lower()
        return any(wanted.lower() in lowered for wanted in self.gpu_models)


class Resources(GpuRequest):
    """Everything one task asks for."""

    cpu: Cpu = Field(default=1.0, description=f"CPU: {CPU_FORM}.")
    memory: MemoryMiB = Field(default=1024, description="Host memory, e.g. 2Gi. Stored in MiB.")


class ResourceAmounts(Model):
    """Aggregate quantities, used for quotas: GPU-equivalents, CPU cores, memory MiB."""

    gpu: float = Field(default=0, ge=0, description="GPU-equivalents.")
    cpu: Cpu = Field(default=0)
    memory: MemoryMiB = Field(default=0)
