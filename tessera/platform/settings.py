"""One Settings object for the control plane and CLI (``TESSERA_`` environment prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tessera.api.queues import check_placement
from tessera.api.simulate import SIMULATE_FORM, parse_simulated_gpus

DEFAULT_PORT = 8470


def default_home() -> Path:
    return Path.home() / ".tessera"


class Settings(BaseSettings):
    """Everything configurable; build it in the app factory, never at import time."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="DB, logs, state, credentials.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is SQLite (WAL) under home."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    url: str | None = Field(default=None, description="Control-plane URL the CLI talks to.")
    token: str | None = Field(default=None, description="Token the CLI uses.")
    simulate_gpus: str | None = Field(default=None, description=f"Simulated GPUs: {SIMULATE_FORM}.")
    change_log_retention: int = Field(
        default=100_000, ge=100, description="Change-log revisions kept before compaction."
    )
    watch_poll_seconds: float = Field(default=0.2, gt=0, le=10)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    scheduler: str = Field(default="tessera", description="Scheduler: tessera or firstfit.")
    scheduler_interval: float = Field(default=0.3, gt=0, le=60, description="Seconds between cycles.")
    scheduler_max_busy: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Most of the wall time scheduling cycles may take: after a cycle of t seconds the "
        "next waits t * (1 / max_busy - 1), so a deep backlog cannot starve the API sharing the process.",
    )
    placement: str = Field(
        default="tessera", description="Cluster-wide placement policy; queues may set their own."
    )
    node_heartbeat_timeout: float = Field(
        default=40, gt=0, description="Seconds without a heartbeat before a node is NotReady."
    )
    node_name: str | None = Field(default=None, description="This machine's node name (hostname).")
    checkpoints: str | None = Field(
        default=None,
        description="Where elastic jobs' checkpoints go by default: a dir every node sees, or an "
        "fsspec URL (s3://bucket/prefix); default home/checkpoints.",
    )
    autoscale_interval: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between the serving controller's ticks."
    )
    gateway_url: str | None = Field(
        default=None, description="The gateway's URL for services' urls; default: the one that reports."
    )
    start_gateway: bool = Field(
        default=False, description="Start (or reuse) this machine's detached gateway (tessera up)."
    )
    gateway_port: int = Field(default=0, ge=0, le=65535, description="The gateway's port; 0: a free one.")
    start_agent: bool = Field(
        default=False, description="Start (or reuse) this machine's detached node agent (tessera up)."
    )
    backend: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where tasks run: local (node agents start them) or kubernetes (pods Tessera binds).",
    )
    kubeconfig: str | None = Field(
        default=None, description="Kubernetes: a kubeconfig path; default $KUBECONFIG, else in-cluster."
    )
    kube_namespace: str | None = Field(
        default=None, description="Kubernetes: the namespace job pods go to; default the kubeconfig's."
    )
    kube_image: str = Field(
        default="ghcr.io/tessera-ai/tessera:0.1.0",
        description="Kubernetes: the image of tasks that name none (--image).",
    )
    kube_secondary_scheduler: bool = Field(
        default=True, description="Kubernetes: schedule other pods that set schedulerName: tessera."
    )
    kube_node_token_secret: str | None = Field(
        default=None, description="Kubernetes: a Secret the control plane fills with the node agents' token."
    )
    kube_gateway_token_secret: str | None = Field(
        default=None, description="Kubernetes: a Secret the control plane fills with the gateways' token."
    )
    kube_cache_dir: str = Field(
        default="/var/lib/tessera/cache",
        description="Kubernetes: the node agents' dataset cache on each node (hostPath; their --cache-dir).",
    )
    kube_interval: float = Field(default=0.2, gt=0, le=10, description="Seconds between pod syncs.")

    # --- high availability: one leader runs the scheduler and controllers (a lease in the DB) ---
    replica_name: str | None = Field(
        default=None,
        description="This control-plane replica's name in the leader lease (unique per replica); default "
        "the host and a hash of home, so a restarted replica takes its lease back at once.",
    )
    leader_lease_seconds: float = Field(
        default=5.0, gt=0, le=300, description="The leader lease's term; a dead leader is replaced after it."
    )

    # --- API fairness: per-user and per-project limits, a protected lane for agents and gateways ---
    api_fairness: bool = Field(default=True, description="Enforce the API's rate and concurrency limits.")
    # defaults sit far above what a person, the CLI or the web UI does; they bite on floods only
    api_user_rate: float = Field(default=50, gt=0, description="Requests a second per user (refill).")
    api_user_burst: int = Field(default=500, ge=1, description="Requests a user may make at once (bucket).")
    api_user_concurrency: int = Field(default=8, ge=1, description="Requests of one user worked on at once.")
    api_project_rate: float = Field(
        default=200, gt=0, description="Requests a second per project, shared by all its members."
    )
    api_project_burst: int = Field(default=2000, ge=1, description="A project's bucket (burst).")
    api_project_concurrency: int = Field(
        default=16, ge=1, description="Requests worked on at once per project, all its members together."
    )
    api_anonymous_rate: float = Field(
        default=20, gt=0, description="Requests a second per client address without a valid token."
    )
    api_anonymous_burst: int = Field(default=200, ge=1, description="Per client address (bucket).")
    api_anonymous_concurrency: int = Field(default=4, ge=1, description="Per client address at once.")
    api_user_lane_seats: int = Field(
        default=24, ge=1, description="Requests worked on at once for all users together."
    )
    api_anonymous_lane_seats: int = Field(
        default=8, ge=1, description="Requests worked on at once for all callers without a valid token."
    )
    api_admin_lane_seats: int = Field(
        default=32, ge=1, description="Cluster admins' own seats (no rate limit: the operator is trusted)."
    )
    api_system_lane_seats: int = Field(
        default=32, ge=1, description="Seats kept for node agents, gateways and metrics scrapers alone."
    )
    api_queue_length: int = Field(
        default=128, ge=0, description="Requests of one caller that may wait for a seat; more get 429."
    )
    api_queue_wait: float = Field(
        default=10, ge=0, description="Seconds a request may wait for a seat before it gets 429."
    )
    api_streams: int = Field(
        default=32, ge=1, description="Open watches and followed logs per user or client address."
    )
    api_identity_cache_seconds: float = Field(
        default=2, ge=0, le=30, description="How long a token's user and projects are cached by the limiter."
    )

    @field_validator("simulate_gpus")
    @classmethod
    def _simulate(cls, value: str | None) -> str | None:
        if value:
            parse_simulated_gpus(value)
        return value

    @field_validator("placement")
    @classmethod
    def _placement(cls, value: str) -> str:
        check_placement(value)
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        from tessera.scheduler.registry import SCHEDULERS

        if value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}; valid: {', '.join(sorted(SCHEDULERS))}")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tessera.db'}"

    @property
    def checkpoint_root(self) -> str:
        return self.checkpoints or str(self.home / "checkpoints")

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials.json"
