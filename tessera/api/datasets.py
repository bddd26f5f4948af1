"""Fluid-style datasets (specs now; cached by the node agents later)."""

from __future__ import annotations

from pydantic import Field, model_validator

from tessera.api.common import MemoryMiB, Meta, Model, Name


class CacheTier(Model):
    medium: str = Field(pattern="^(memory|disk)$")
    path: str | None = None
    quota: MemoryMiB


class CachePolicy(Model):
    capacity_per_node: MemoryMiB | None = None
    tiers: list[CacheTier] = Field(default_factory=list)
    high_watermark: float = Field(default=0.95, gt=0, le=1)
    low_watermark: float = Field(default=0.7, gt=0, le=1)
    replicas: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _marks(self) -> CachePolicy:
        if self.low_watermark >= self.high_watermark:
            raise ValueError("low_watermark must be below high_watermark")
        return self


class DatasetSpec(Model):
    name: Name
    project: Name = "default"
    source: str = Field(min_length=3, description="fsspec URI: file://, s3://, http(s)://, gs://")
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    credentials_ref: str | None = Field(
        default=None, description="Name of a stored secret; never echoed back."
    )
    endpoint_url: str | None = None
    cache: CachePolicy = Field(default_factory=CachePolicy)

    @model_validator(mode="after")
    def _scheme(self) -> DatasetSpec:
        if "://" not in self.source:
            raise ValueError("source must be a URI like s3://bucket/path or file:///data")
        return self


class Dataset(Meta):
    name: Name
    project: Name
    spec: DatasetSpec
