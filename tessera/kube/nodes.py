"""Node inventory from Kubernetes Node objects, for nodes no Tessera agent reports on.

A node whose DaemonSet agent registered itself (with NVML's inventory and its measurements) is the
agent's; a GPU node without one is registered from its Node object: the GPU count from its capacity
(``nvidia.com/gpu`` or ``tessera.io/gpu``), the model and memory from GPU feature discovery's labels.
A Ready node is kept alive by heartbeats from here; a node that goes NotReady or is deleted stops
getting them, and the control plane's node controller then marks it NotReady and its jobs follow
their retry policy (node lost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable

from sqlalchemy import select, update

from tessera.api.cluster import Gpu, NodeInventory, NodeState, RegisterNodeRequest
from tessera.api.quantities import parse_memory_mib
from tessera.kube import names
from tessera.kube.client import Obj
from tessera.platform.services.nodes import register_node
from tessera.platform.store.db import Database
from tessera.platform.store.rows import NodeRow
from tessera.platform.store.types import utcnow

log = logging.getLogger(__name__)
DEFAULT_GPU_MEMORY_MIB = 81920
_LABEL_PREFIXES_KEPT = ("kubernetes.io/", "node.kubernetes.io/", "topology.kubernetes.io/")


def _first(mapping: dict[str, str], keys: Iterable[str]) -> str | None:
    for k in keys:
        if mapping.get(k):
            return mapping[k]
    return None


def gpu_count(node: Obj) -> int:
    capacity = (node.get("status") or {}).get("capacity") or {}
    value = _first(capacity, names.NODE_GPU_CAPACITY)
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def is_ready(node: Obj) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _cpu(value: str | None) -> float:
    if not value:
        return 1
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def inventory(node: Obj) -> NodeInventory:
    """What a Node object says its GPUs are (the UUIDs are stable names, not NVML's)."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    labels = meta.get("labels") or {}
    name = meta["name"]
    model = (_first(labels, names.NODE_GPU_PRODUCT) or "GPU").replace("-", " ")
    try:
        memory = int(_first(labels, names.NODE_GPU_MEMORY) or DEFAULT_GPU_MEMORY_MIB)
    except ValueError:
        memory = DEFAULT_GPU_MEMORY_MIB
    gpus = [
        Gpu(
            uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}.gpu{i}.tessera.io')}",
            index=i,
            model=model,
            memory_mib=memory,
        )
        for i in range(gpu_count(node))
    ]
    capacity = status.get("capacity") or {}
    try:
        host_memory = parse_memory_mib(capacity.get("memory", "1024Mi"))
    except ValueError:
        host_memory = 1024
    return NodeInventory(
        gpus=gpus,
        cpu=max(1, _cpu(capacity.get("cpu"))),
        memory=max(1, host_memory),
        driver_version=labels.get("nvidia.com/cuda.driver-version.full"),
        agent_version=None,
    )


def node_labels(node: Obj) -> dict[str, str]:
    """The Node's labels Tessera keeps (for selectors): all but the kubelet's own bookkeeping."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    out = {}
    for k, v in labels.items():
        if "/" in k and not k.startswith(_LABEL_PREFIXES_KEPT) and k.split("/", 1)[0].endswith("k8s.io"):
            continue
        out[k] = v
    return out


class NodeSync:
    """Registers GPU nodes from Node objects and heartbeats the Ready ones."""

    def __init__(self, db: Database, heartbeat_every: float) -> None:
        self.db = db
        self.heartbeat_every = heartbeat_every
        self._registered: dict[str, str] = {}  # node -> hash of what was registered
        self._seen: dict[str, str] = {}  # node -> the Node object's resourceVersion then
        self._last_beat = 0.0

    def sync(self, nodes: list[Obj]) -> None:
        gpu_nodes = [n for n in nodes if gpu_count(n) > 0]
        with self.db.read() as session:
            query = select(NodeRow.name, NodeRow.agent_url, NodeRow.state)
            rows = {name: (agent, state) for name, agent, state in session.execute(query)}
        ready: list[str] = []
        for node in gpu_nodes:
            name = node["metadata"]["name"]
            agent, state = rows.get(name, (None, None))
            if agent:
                continue  # its agent reports (NVML inventory, measurements, heartbeats)
            if not is_ready(node):
                continue
            version = str(node["metadata"].get("resourceVersion"))
            if state == NodeState.READY.value and self._seen.get(name) == version:
                ready.append(name)  # the Node object has not changed since it was registered
                continue
            req = RegisterNodeRequest(name=name, labels=node_labels(node), inventory=inventory(node))
            digest = hashlib.sha256(
                json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()
            ).hexdigest()
            if state != NodeState.READY.value or self._registered.get(name) != digest:
                register_node(self.db, req)
                self._registered[name] = digest
            else:
                ready.append(name)
            self._seen[name] = version
        now = time.monotonic()
        if ready and now - self._last_beat >= self.heartbeat_every:
            self._last_beat = now
            with self.db.write() as tx:  # one statement for every Ready node: cheap at 1,000 nodes
                tx.session.execute(
                    update(NodeRow)
                    .where(NodeRow.name.in_(ready), NodeRow.state == NodeState.READY.value)
                    .values(last_heartbeat_at=utcnow())
                )
