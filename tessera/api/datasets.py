"""Fluid-style datasets, their loads, and the secrets their sources are read with.

A dataset names a source (any fsspec URI), what of it to take (include/exclude
globs), how to read it (credentials by reference to a secret, never echoed back),
and how node caches keep it (capacity, memory and disk tiers with quotas,
watermarks, replicas). Its status says how much of it is cached, where, and how
reads went; loads prewarm caches and report progress.
"""

from __future__ import annotations

import enum
import fnmatch
from datetime import datetime
from typing import Annotated
from urllib.parse import urlparse

from pydantic import AfterValidator, Field, field_validator, model_validator

from tessera.api.common import INT32_MAX, INT64_MAX, MemoryMiB, Meta, Model, Name

SCHEMES = ("file", "s3", "http", "https", "gs", "gcs")
SOURCE_FORM = "a URI like s3://bucket/prefix, https://host/path, gs://bucket/path or file:///data"
SECRET_KEY_FORM = "a key like aws_access_key_id: letters, digits, '_', '-' or '.'"
CRON_FORM = "a 5-field cron expression like '0 3 * * *' (minute hour day month weekday)"


def check_source(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in SCHEMES or not (parsed.netloc or parsed.path.strip("/")):
        raise ValueError(f"{value!r} is not {SOURCE_FORM}; schemes: {', '.join(SCHEMES)}")
    return value


def check_cron(value: str) -> str:
    from croniter import croniter

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not {CRON_FORM}")
    return value


def _glob(value: str) -> str:
    if not value or value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not a relative glob like '*.parquet' or 'train/**'")
    return value


Glob = Annotated[str, AfterValidator(_glob)]


class CacheMedium(enum.StrEnum):
    MEMORY = "memory"
    DISK = "disk"


class CacheTier(Model):
    """A share of the dataset's cache on a node: memory (the node's tmpfs) or disk (its cache dir)."""

    medium: CacheMedium
    quota: MemoryMiB = Field(description="This tier's share of the dataset's cache on a node, e.g. 20Gi.")


class CachePolicy(Model):
    capacity_per_node: MemoryMiB | None = Field(
        default=None, description="Most this dataset may take on one node; default: its tiers' quotas."
    )
    tiers: list[CacheTier] = Field(default_factory=list, max_length=4)
    high_watermark: float = Field(
        default=0.95, gt=0, le=1, description="Evict above this share of capacity..."
    )
    low_watermark: float = Field(default=0.7, gt=0, le=1, description="...down to this share.")
    replicas: int = Field(default=1, ge=1, le=100, description="Nodes that keep a full copy after a load.")

    @model_validator(mode="after")
    def _marks(self) -> CachePolicy:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark ({self.high_watermark})"
            )
        media = [t.medium for t in self.tiers]
        if len(set(media)) != len(media):
            raise ValueError("tiers must have distinct media (one memory tier, one disk tier)")
        return self

    @property
    def capacity_mib(self) -> int | None:
        """The most this dataset may take on one node (None: no limit of its own)."""
        if self.capacity_per_node is not None:
            return self.capacity_per_node
        return sum(t.quota for t in self.tiers) or None


class DatasetSpec(Model):
    name: Name
    project: Name = "default"
    source: str = Field(min_length=3, max_length=2000, description=SOURCE_FORM)
    include: list[Glob] = Field(default_factory=list, max_length=100, description="Globs of files to take.")
    exclude: list[Glob] = Field(default_factory=list, max_length=100, description="Globs of files to skip.")
    credentials: Name | None = Field(
        default=None, description="Name of a secret of the project (its values are never echoed back)."
    )
    endpoint_url: str | None = Field(default=None, max_length=500, description="S3-compatible endpoint.")
    cache: CachePolicy = Field(default_factory=CachePolicy)
    load_schedule: str | None = Field(default=None, description=f"Reload on a schedule: {CRON_FORM}.")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_source(value)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http(s) URL like http://127.0.0.1:9000")
        return value

    @field_validator("load_schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return check_cron(value) if value is not None else None

    def selects(self, path: str) -> bool:
        """Whether a file (relative to the source) is part of the dataset."""
        if self.include and not any(fnmatch.fnmatch(path, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatch(path, g) for g in self.exclude)


class CreateDatasetRequest(DatasetSpec):
    pass


class DatasetPhase(enum.StrEnum):
    PENDING = "Pending"  # not listed yet
    NOT_CACHED = "NotCached"  # listed; cached on no node in full
    LOADING = "Loading"
    READY = "Ready"  # fully cached on at least one node (replicas: on that many)
    FAILED = "Failed"  # the source cannot be read, or it cannot fit the cache


class NodeCache(Model):
    """One node's copy."""

    node: str
    cached_bytes: int = 0
    cached_files: int = 0
    cached_percent: float = Field(default=0, ge=0, le=100)
    local_hits: int = Field(default=0, description="Reads served from this node's cache.")
    peer_hits: int = Field(default=0, description="Reads this node served from a peer's cache.")
    source_reads: int = Field(default=0, description="Reads this node had to make from the source.")
    updated_at: datetime | None = None


class DatasetStatus(Model):
    phase: DatasetPhase = DatasetPhase.PENDING
    message: str = ""
    total_bytes: int | None = Field(default=None, description="The selected files' size at the source.")
    total_files: int | None = None
    listed_at: datetime | None = None
    cached_bytes: int = Field(default=0, description="On the node with the most of it.")
    cached_percent: float = Field(default=0, ge=0, le=100)
    nodes: list[NodeCache] = Field(default_factory=list)
    hit_ratio: float | None = Field(
        default=None, description="(local + peer hits) / all reads, over every node; None before any read."
    )


class Dataset(Meta):
    name: Name
    project: Name
    spec: DatasetSpec
    status: DatasetStatus = Field(default_factory=DatasetStatus)


class LoadState(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class LoadTrigger(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    JOB = "job"


class LoadProgress(Model):
    """One node's part of a load."""

    node: str
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    state: LoadState = LoadState.PENDING
    message: str = ""


class DataLoad(Meta):
    dataset: Name
    project: Name
    number: int
    trigger: LoadTrigger
    state: LoadState
    message: str = ""
    include: list[str] = Field(default_factory=list, description="A subset load's globs; empty: all.")
    nodes: list[LoadProgress] = Field(default_factory=list)
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    percent: float = Field(default=0, ge=0, le=100)
    eta_seconds: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class CreateLoadRequest(Model):
    nodes: list[Name] = Field(
        default_factory=list, description="Nodes to load on; default as many as the dataset's replicas."
    )
    include: list[Glob] = Field(
        default_factory=list, max_length=100, description="Load only these files (a subset); default all."
    )


# secrets -------------------------------------------------------------------------------------


def _secret_key(value: str) -> str:
    if not value or len(value) > 253 or not all(c.isalnum() or c in "_-." for c in value):
        raise ValueError(f"{value!r} is not {SECRET_KEY_FORM}")
    return value


SecretKey = Annotated[str, AfterValidator(_secret_key)]


class CreateSecretRequest(Model):
    name: Name
    project: Name = "default"
    data: dict[SecretKey, str] = Field(min_length=1, max_length=50, description="Values; never returned.")

    @field_validator("data")
    @classmethod
    def _sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if len(item) > 64 * 1024:
                raise ValueError(f"the value of {key!r} is longer than 64 KiB")
        return value

    def __repr__(self) -> str:  # values never reach a log through a repr
        return f"CreateSecretRequest(name={self.name!r}, project={self.project!r}, keys={sorted(self.data)})"

    __str__ = __repr__


class Secret(Meta):
    """A secret as the API shows it: its keys, never its values."""

    name: Name
    project: Name
    keys: list[str]


# node agents ---------------------------------------------------------------------------------


class PeerCache(Model):
    """A peer node that holds (some of) a dataset: where its agent serves it, and the read token."""

    node: str
    url: str
    token: str = Field(description="Grants reads of that node's cache, nothing else.")

    def __repr__(self) -> str:
        return f"PeerCache(node={self.node!r}, url={self.url!r})"

    __str__ = __repr__


class LoadWork(Model):
    """What a node agent is asked to load: the dataset, its files, and what its source needs."""

    load_id: str
    dataset_id: str
    dataset: Name
    project: Name
    spec: DatasetSpec
    files: list[tuple[str, int, str]] = Field(description="(path, size, etag) of every selected file.")
    secrets: dict[str, str] = Field(default_factory=dict, description="Only ever sent to node agents.")
    peers: list[PeerCache] = Field(default_factory=list, description="Nodes to read from before the source.")

    def __repr__(self) -> str:
        return f"LoadWork(load_id={self.load_id!r}, dataset={self.dataset!r}, files={len(self.files)})"

    __str__ = __repr__


class LoadReport(Model):
    """A node's progress on one load (idempotent: the latest wins)."""

    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    files_done: int = Field(ge=0)
    files_total: int = Field(ge=0)
    state: LoadState
    message: str = Field(default="", max_length=2000)


class CacheReport(Model):
    """What one node holds of one dataset, and how reads of it went (running totals)."""

    dataset_id: str
    cached_bytes: int = Field(ge=0, le=INT64_MAX)
    cached_files: int = Field(ge=0, le=INT32_MAX)
    local_hits: int = Field(default=0, ge=0, le=INT64_MAX)
    peer_hits: int = Field(default=0, ge=0, le=INT64_MAX)
    source_reads: int = Field(default=0, ge=0, le=INT64_MAX)


class CacheReports(Model):
    caches: list[CacheReport] = Field(max_length=10_000)
