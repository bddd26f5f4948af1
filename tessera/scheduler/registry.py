"""The schedulers Tessera can run, by name (one registry; an unknown name lists the valid ones)."""

from __future__ import annotations

from collections.abc import Callable

from tessera.scheduler.cycle import TesseraScheduler
from tessera.scheduler.firstfit import FirstFit
from tessera.scheduler.model import Scheduler

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {"tessera": TesseraScheduler, "firstfit": FirstFit}


def make(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(sorted(SCHEDULERS))}") from None
