"""Reconcile loops driven by DB state, run by the control plane's lifespan.

Every replica runs the leader election (tessera/platform/leader.py); only the leader
runs these loops, a fresh set per term, over a database view whose writes are fenced
by the term's epoch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from fastapi.concurrency import run_in_threadpool

from tessera.platform.controllers.compaction import compact_change_log
from tessera.platform.controllers.datasets import list_sources, prewarm_for_jobs, scheduled_loads
from tessera.platform.controllers.jobindex import JobIndex
from tessera.platform.controllers.nodes import reconcile_nodes
from tessera.platform.controllers.pending import reconcile_pending
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.controllers.serving import ServingLoop
from tessera.platform.leader import Leader, Lease, replica_name
from tessera.platform.metrics import SchedulerMetrics
from tessera.platform.services.traffic import Traffic
from tessera.platform.settings import Settings
from tessera.platform.store.db import Database, Fenced
from tessera.platform.store.types import utcnow
from tessera.scheduler.registry import make

log = logging.getLogger(__name__)


async def _loop(name: str, every: float, step: Callable[[], object]) -> None:
    while True:
        try:
            await run_in_threadpool(step)
        except Fenced:  # this replica lost the lease; its term's loops are being cancelled
            log.info("controller %s: write refused, no longer the leader", name)
        except Exception:  # a failed pass is retried next time; never kill the loop
            log.exception("controller %s failed a pass", name)
        await asyncio.sleep(every)


def _each(*steps: tuple[str, Callable[[], object]]) -> None:
    """Steps that share a loop (and its state), each failing on its own."""
    for name, step in steps:
        try:
            step()
        except Fenced:
            raise
        except Exception:
            log.exception("controller step %s failed", name)


def elect(
    db: Database,
    settings: Settings,
    traffic: Traffic | None = None,
    scheduler_metrics: SchedulerMetrics | None = None,
) -> Leader:
    """This replica's side of the leader election; while it leads, the loops of ``leader_loops`` run."""
    lease = Lease(db, replica_name(settings), settings.leader_lease_seconds)
    shared = traffic or Traffic()
    return Leader(lease, lambda fenced, _epoch: leader_loops(fenced, settings, shared, scheduler_metrics))


def start(
    db: Database, settings: Settings, traffic: Traffic | None = None, leader: Leader | None = None
) -> list[asyncio.Task[None]]:
    """Start the leader election (which starts and stops the controller loops); the caller
    cancels the task at shutdown, which stops the loops and releases the lease."""
    leader = leader or elect(db, settings, traffic)
    return [asyncio.create_task(leader.run(), name=f"leader-lease {leader.replica}")]


def leader_loops(
    db: Database, settings: Settings, traffic: Traffic, scheduler_metrics: SchedulerMetrics | None = None
) -> list[asyncio.Task[None]]:
    """Start one term's controller loops over ``db`` (the term's fenced view); a fresh
    scheduling loop lists the store anew, so it sees every write of earlier terms."""
    scheduling = SchedulingLoop(
        db, make(settings.scheduler), settings.placement, scheduler_metrics, settings.scheduler_max_busy
    )
    serving = ServingLoop(db, traffic)
    jobs = JobIndex(db)
    timeout = timedelta(seconds=settings.node_heartbeat_timeout)
    started = utcnow()
    tasks = []
    if settings.backend == "kubernetes":
        from tessera.platform.controllers import kubernetes

        tasks.append(asyncio.create_task(kubernetes.run(db, settings)))
    return tasks + [
        asyncio.create_task(_loop("scheduler", settings.scheduler_interval, scheduling.step)),
        asyncio.create_task(
            _loop("nodes", 2.0, lambda: reconcile_nodes(db, timeout, watching_since=started))
        ),
        # deadlines and prewarm share one index of live jobs, kept from the change feed
        asyncio.create_task(
            _loop(
                "live-jobs",
                1.0,
                lambda: _each(
                    ("deadlines", lambda: reconcile_pending(db, index=jobs)),
                    ("prewarm", lambda: prewarm_for_jobs(db, jobs)),
                ),
            )
        ),
        asyncio.create_task(_loop("datasets", 1.0, lambda: (list_sources(db), scheduled_loads(db)))),
        asyncio.create_task(_loop("serving", settings.autoscale_interval, serving.step)),
        asyncio.create_task(
            _loop("compaction", 30.0, lambda: compact_change_log(db, settings.change_log_retention))
        ),
    ]
