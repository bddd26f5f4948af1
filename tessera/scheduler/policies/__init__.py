"""Numpy placement policies for GPU-sharing clusters, by name (see ``policy``).

``random``, ``bestfit``, ``packing``, ``clustering``, ``dotprod`` and ``fgd`` follow the FGD paper's
simulator (USENIX ATC'23); ``spread`` is least-loaded-first; ``tessera`` is our own (see
``tessera.scheduler.policies.tessera``). Each filters and scores all nodes at once on a
``ClusterState`` and breaks ties by the lowest tie rank (the lowest node name unless told otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tessera.scheduler.policies.base import Policy
from tessera.scheduler.policies.fgd import FgdPolicy, FragModel, TypicalPod
from tessera.scheduler.policies.simple import (
    BestFitPolicy,
    ClusteringPolicy,
    DotProdPolicy,
    PackingPolicy,
    RandomPolicy,
    SpreadPolicy,
)
from tessera.scheduler.policies.state import ClusterState, Placement, PodRequest
from tessera.scheduler.policies.tessera import TesseraPolicy

PAPER_POLICIES = ("random", "dotprod", "clustering", "packing", "bestfit", "fgd")
POLICIES = (*PAPER_POLICIES, "spread", "tessera")

_MAKERS: dict[str, Callable[[int, Sequence[TypicalPod]], Policy]] = {
    "random": lambda seed, typical: RandomPolicy(seed),
    "bestfit": lambda seed, typical: BestFitPolicy(),
    "packing": lambda seed, typical: PackingPolicy(),
    "clustering": lambda seed, typical: ClusteringPolicy(),
    "dotprod": lambda seed, typical: DotProdPolicy(),
    "spread": lambda seed, typical: SpreadPolicy(),
    "fgd": lambda seed, typical: FgdPolicy(typical),
    "tessera": lambda seed, typical: TesseraPolicy(typical),
}


def policy(name: str, *, seed: int = 0, typical: Sequence[TypicalPod] = ()) -> Policy:
    """A fresh policy by name. ``seed`` feeds ``random``; ``typical`` (the expected pod mix) is
    required by ``fgd`` and ``tessera``."""
    try:
        make = _MAKERS[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}") from None
    if name in ("fgd", "tessera") and not typical:
        raise ValueError(f"policy {name!r} needs the typical pods of the workload")
    return make(seed, typical)


__all__ = [
    "POLICIES",
    "PAPER_POLICIES",
    "BestFitPolicy",
    "ClusterState",
    "ClusteringPolicy",
    "DotProdPolicy",
    "FgdPolicy",
    "FragModel",
    "PackingPolicy",
    "Placement",
    "PodRequest",
    "Policy",
    "RandomPolicy",
    "SpreadPolicy",
    "TesseraPolicy",
    "TypicalPod",
    "policy",
]
