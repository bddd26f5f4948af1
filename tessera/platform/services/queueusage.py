"""Queue usage as the scheduler counts it: each running job's charge (GPU-equivalents, CPU, memory)
to its queue and ancestors, against guarantees, with dominant and fair shares (DRF)."""

from __future__ import annotations

from tessera.api.queues import QueueUsage, ResourceAmounts
from tessera.platform.controllers.view import load_view
from tessera.platform.store.db import Database
from tessera.platform.store.types import utcnow
from tessera.scheduler.model import Amounts
from tessera.scheduler.quota import QueueTree, running_charge


def _amounts(a: Amounts) -> ResourceAmounts:
    return ResourceAmounts(
        gpu=round(max(a.gpu, 0.0), 3), cpu=round(max(a.cpu, 0.0), 3), memory=int(a.memory_mib)
    )


def queue_usage(db: Database) -> list[QueueUsage]:
    snapshot = load_view(db).snapshot(utcnow())
    ready = [n for n in snapshot.nodes if n.ready]
    totals = Amounts(
        float(sum(len(n.gpus) for n in ready)),
        sum(n.cpu for n in ready),
        float(sum(n.memory_mib for n in ready)),
    )
    gpu_memory = {g.uuid: g.memory_mib for n in snapshot.nodes for g in n.gpus}
    names = (
        {q.name for q in snapshot.queues}
        | {j.queue for j in snapshot.running}
        | {j.queue for j in snapshot.pending}
    )
    tree = QueueTree(snapshot.queues, names, totals)
    running: dict[str, int] = {}
    for job in snapshot.running:
        tree.add(job.queue, running_charge(job, gpu_memory))
        running[job.queue] = running.get(job.queue, 0) + 1
    pending: dict[str, int] = {}
    for p in snapshot.pending:
        pending[p.queue] = pending.get(p.queue, 0) + 1
    weights = {name: tree.weight(name) for name in tree.parent}
    out = []
    for name in sorted(tree.parent):
        state = tree.states.get(name)
        guaranteed = state.guaranteed if state else Amounts()
        used = tree.usage[name]
        siblings = [
            s
            for s in tree.children.get(tree.parent[name], [])
            if s == name or tree.usage[s] != Amounts() or pending.get(s)
        ]
        fair = weights[name] / sum(weights[s] for s in siblings) if siblings else 1.0
        shares = [
            getattr(used, f) / getattr(totals, f)
            for f in ("gpu", "cpu", "memory_mib")
            if getattr(totals, f) > 0
        ]
        out.append(
            QueueUsage(
                queue=name,
                parent=tree.parent[name],
                used=_amounts(used),
                guaranteed=_amounts(guaranteed),
                borrowed=_amounts(
                    Amounts(
                        max(0.0, used.gpu - guaranteed.gpu),
                        max(0.0, used.cpu - guaranteed.cpu),
                        max(0.0, used.memory_mib - guaranteed.memory_mib),
                    )
                ),
                borrowing_limit=_amounts(state.borrowing_limit) if state and state.borrowing_limit else None,
                weight=weights[name],
                dominant_share=round(max(shares, default=0.0), 4),
                fair_share=round(fair, 4),
                running=running.get(name, 0),
                pending=pending.get(name, 0),
            )
        )
    return out
