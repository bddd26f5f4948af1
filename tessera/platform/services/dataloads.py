"""Loads on node agents: which nodes load, what they are sent, and what their reports change.

A load names its nodes when it is created (the dataset's ``replicas`` Ready nodes,
those holding most of it first). Each node's agent lists its share of live loads
(with the dataset's files and credentials: node agents only), copies the files
into its cache and reports progress; the load is Running from the first report,
Succeeded once every node has, Failed as soon as one fails. Agents also report
what they hold of each dataset: a dataset is Ready only when enough nodes hold
every byte of it, never half-cached.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from tessera.api.cluster import NodeState
from tessera.api.datasets import (
    CacheReport,
    DatasetPhase,
    DatasetSpec,
    DatasetStatus,
    LoadProgress,
    LoadReport,
    LoadState,
    LoadWork,
    PeerCache,
)
from tessera.datacache.peers import peer_token
from tessera.platform.problems import NotFound
from tessera.platform.services.common import put
from tessera.platform.services.datasets import (
    LIVE_LOADS,
    _event,
    dataset_secrets,
    render_dataset,
    render_load,
    subset,
)
from tessera.platform.store.db import Database, Tx
from tessera.platform.store.rows import (
    DataLoadRow,
    DatasetCacheRow,
    DatasetRow,
    NodeRow,
    ProjectRow,
)
from tessera.platform.store.types import utcnow


def node_work(db: Database, node: str) -> list[LoadWork]:
    """Live loads this node has a part in, not finished on it yet."""
    with db.read() as session:
        out = []
        rows = session.execute(select(DataLoadRow).where(DataLoadRow.state.in_(LIVE_LOADS))).scalars()
        for load in rows:
            mine = next((LoadProgress.model_validate(n) for n in load.nodes if n["node"] == node), None)
            if mine is None or mine.state not in (LoadState.PENDING, LoadState.RUNNING):
                continue
            dataset = session.get(DatasetRow, load.dataset_id)
            if dataset is None or dataset.manifest is None:
                continue
            work = _work(session, dataset, str(load.id), node)
            if load.include:  # a subset load
                work.files = [tuple(f) for f in subset([list(f) for f in work.files], load.include)]
            out.append(work)
        return out


def dataset_work(db: Database, dataset_id: uuid.UUID, node: str) -> LoadWork:
    """What a node needs to cache one dataset for a task that mounts it."""
    with db.read() as session:
        dataset = session.get(DatasetRow, dataset_id)
        if dataset is None:
            raise NotFound(f"no dataset with id {dataset_id} (deleted?)")
        if dataset.manifest is None:
            status = DatasetStatus.model_validate(dataset.status)
            raise NotFound(f"dataset {dataset.name!r} is not listed yet ({status.phase}: {status.message})")
        return _work(session, dataset, "", node)


def _peers(session: Any, dataset: DatasetRow, node: str) -> list[PeerCache]:
    """Other Ready nodes holding some of the dataset, those holding most first."""
    rows = session.execute(
        select(DatasetCacheRow.node, DatasetCacheRow.cached_bytes, NodeRow.agent_url, NodeRow.agent_secret)
        .join(NodeRow, NodeRow.name == DatasetCacheRow.node)
        .where(
            DatasetCacheRow.dataset_id == dataset.id,
            DatasetCacheRow.node != node,
            DatasetCacheRow.cached_bytes > 0,
            NodeRow.state == NodeState.READY.value,
        )
        .order_by(DatasetCacheRow.cached_bytes.desc(), DatasetCacheRow.node)
    ).all()
    return [
        PeerCache(node=name, url=url, token=peer_token(secret))
        for name, _, url, secret in rows
        if url and secret
    ]


def _work(session: Any, dataset: DatasetRow, load_id: str, node: str) -> LoadWork:
    spec = DatasetSpec.model_validate(dataset.spec)
    secrets = dataset_secrets(session, dataset)
    project = session.get(ProjectRow, dataset.project_id)
    return LoadWork(
        load_id=load_id,
        dataset_id=str(dataset.id),
        dataset=dataset.name,
        project=project.name if project else "?",
        spec=spec,
        files=[(str(f[0]), int(f[1]), str(f[2])) for f in dataset.manifest or []],
        secrets=secrets,
        peers=_peers(session, dataset, node),
    )


def report_load(db: Database, node: str, load_id: uuid.UUID, report: LoadReport) -> None:
    """A node's progress on a load; moves the load (and the dataset's phase) accordingly."""
    with db.write() as tx:
        load = tx.session.get(DataLoadRow, load_id)
        if load is None:
            raise NotFound(f"no load with id {load_id}")
        if load.state not in LIVE_LOADS:
            return  # a late report on a finished load changes nothing
        nodes = [LoadProgress.model_validate(n) for n in load.nodes]
        quarter_before = _quarter(nodes)
        if not any(n.node == node for n in nodes):
            raise NotFound(f"node {node!r} has no part in load {load_id}")
        nodes = [LoadProgress(node=node, **report.model_dump()) if n.node == node else n for n in nodes]
        load.nodes = [n.model_dump(mode="json") for n in nodes]
        dataset = tx.session.get(DatasetRow, load.dataset_id)
        assert dataset is not None
        project = tx.session.get(ProjectRow, dataset.project_id)
        project_name = project.name if project else "?"
        before = load.state
        if any(n.state is LoadState.FAILED for n in nodes):
            failed = next(n for n in nodes if n.state is LoadState.FAILED)
            load.state, load.message = LoadState.FAILED.value, f"on {failed.node}: {failed.message}"
            load.finished_at = utcnow()
        elif all(n.state is LoadState.SUCCEEDED for n in nodes):
            load.state, load.message = (
                LoadState.SUCCEEDED.value,
                f"cached on {', '.join(n.node for n in nodes)}",
            )
            load.finished_at = utcnow()
        else:
            load.state = LoadState.RUNNING.value
            load.started_at = load.started_at or utcnow()
        rendered = put(tx, "dataload", load, lambda r: render_load(r, dataset.name, project_name))
        if load.state == LoadState.RUNNING.value and _quarter(nodes) > quarter_before:
            eta = f", eta {rendered.eta_seconds:.0f}s" if rendered.eta_seconds is not None else ""
            done = f"{rendered.bytes_done} of {rendered.bytes_total} bytes"
            files = f"{rendered.files_done} of {rendered.files_total} files"
            message = f"load {load.number}: {rendered.percent:.0f}% ({done}, {files}){eta}"
            _event(tx, dataset, project_name, "LoadProgress", message)
        if load.state != before:
            kind = {"Running": "LoadStarted", "Succeeded": "LoadSucceeded", "Failed": "LoadFailed"}[
                load.state
            ]
            _event(tx, dataset, project_name, kind, f"load {load.number}: {load.message or load.state}",
                   warning=load.state == LoadState.FAILED.value)  # fmt: skip
        _settle_phase(tx, dataset, project_name)


def _quarter(nodes: list[LoadProgress]) -> int:
    """Which quarter of the load is done (0-4): a progress event marks each one passed."""
    total = sum(n.bytes_total for n in nodes)
    return int(4 * sum(n.bytes_done for n in nodes) / total) if total else 0


def report_caches(db: Database, node: str, reports: list[CacheReport]) -> tuple[int, list[str]]:
    """What the node holds of each dataset (running totals); returns how many changed, and the
    datasets that no longer exist (the node drops them from its cache)."""
    written = 0
    gone: list[str] = []
    with db.write() as tx:
        for report in reports:
            try:
                dataset_id = uuid.UUID(report.dataset_id)
            except ValueError:
                gone.append(report.dataset_id)
                continue
            dataset = tx.session.get(DatasetRow, dataset_id)
            if dataset is None:
                gone.append(report.dataset_id)
                continue
            row = tx.session.execute(
                select(DatasetCacheRow).where(
                    DatasetCacheRow.dataset_id == dataset_id, DatasetCacheRow.node == node
                )
            ).scalar_one_or_none()
            fields = report.model_dump(exclude={"dataset_id"})
            if row is None:
                row = DatasetCacheRow(dataset_id=dataset_id, node=node, **fields)
                tx.session.add(row)
            elif all(getattr(row, k) == v for k, v in fields.items()):
                continue
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
            tx.stamp(row)
            tx.session.flush()
            project = tx.session.get(ProjectRow, dataset.project_id)
            _settle_phase(tx, dataset, project.name if project else "?")
            written += 1
    return written, gone


def _settle_phase(tx: Tx, dataset: DatasetRow, project: str) -> None:
    """Ready when ``replicas`` nodes hold all of it; Loading while a load runs; else NotCached."""
    status = DatasetStatus.model_validate(dataset.status)
    if status.phase in (DatasetPhase.PENDING, DatasetPhase.FAILED) or status.total_bytes is None:
        put(tx, "dataset", dataset, lambda r: render_dataset(tx, r))
        return
    replicas = DatasetSpec.model_validate(dataset.spec).cache.replicas
    full = [
        c
        for c in tx.session.execute(
            select(DatasetCacheRow).where(DatasetCacheRow.dataset_id == dataset.id)
        ).scalars()
        if c.cached_bytes >= status.total_bytes and c.cached_files >= (status.total_files or 0)
    ]
    running = tx.session.execute(
        select(DataLoadRow.id).where(DataLoadRow.dataset_id == dataset.id, DataLoadRow.state.in_(LIVE_LOADS))
    ).first()
    if len(full) >= replicas:
        phase = DatasetPhase.READY
    elif running is not None:
        phase = DatasetPhase.LOADING
    else:
        phase = DatasetPhase.NOT_CACHED
    if phase is not status.phase:
        where = ", ".join(sorted(c.node for c in full)) or "no node"
        message = f"fully cached on {where}" if phase is DatasetPhase.READY else status.message
        dataset.status = status.model_copy(update={"phase": phase, "message": message}).model_dump(
            mode="json"
        )
        if phase is DatasetPhase.READY:
            _event(tx, dataset, project, "Ready", message)
    put(tx, "dataset", dataset, lambda r: render_dataset(tx, r))
