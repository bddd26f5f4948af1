"""Placement-quality simulation on Alibaba's openb GPU-sharing traces (the FGD paper's method).

- ``traces``: read node and pod CSV files (``read_nodes``, ``read_pods``, ``TraceError``);
- ``method``: the paper's arrival order with tuning to 130% and FGD's typical pods;
- ``replay``: replay a pod list against a policy of ``tessera.scheduler.policies`` (pods never
  leave, the paper's headline metric) or by time with departures (wait time and JCT).
"""

from __future__ import annotations

from tessera.sim.method import arrival_order, cluster, requests, typical_pods
from tessera.sim.replay import (
    DepartureResult,
    ReplayResult,
    replay,
    replay_with_departures,
    run,
)
from tessera.sim.traces import NodeTable, PodTable, TraceError, read_nodes, read_pods

__all__ = [
    "DepartureResult",
    "NodeTable",
    "PodTable",
    "ReplayResult",
    "TraceError",
    "arrival_order",
    "cluster",
    "read_nodes",
    "read_pods",
    "replay",
    "replay_with_departures",
    "requests",
    "run",
    "typical_pods",
]
