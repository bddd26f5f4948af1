"""The pods the device plugin matches an Allocate call against, and where it reads them from."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tessera.kube import names


@dataclass(frozen=True)
class PodInfo:
    """A pod on this node as the device plugin needs it: who it is, its annotations, its slice count."""

    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    # the pod's request of `tessera.io/slice`, summed over its containers' limits
    slice_count: int = 0

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodInfo:
        """From a Pod object as the API server returns it (JSON decoded)."""
        meta = pod.get("metadata") or {}
        return cls(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name") or "",
            uid=meta.get("uid") or "",
            annotations=dict(meta.get("annotations") or {}),
            slice_count=slice_request_count(pod.get("spec") or {}),
        )


def slice_request_count(spec: Mapping[str, Any]) -> int:
    """The pod's request of `tessera.io/slice`: the sum over its containers' resources.limits.

    Extended resources are integers; a quantity the kubelet would reject reads as 0.
    """
    total = 0
    for container in spec.get("containers") or ():
        limits = (container.get("resources") or {}).get("limits") or {}
        value = limits.get(names.SLICE_RESOURCE)
        if value is None:
            continue
        try:
            total += int(value)
        except (TypeError, ValueError):
            continue
    return total


class PodSource(Protocol):
    """Where the plugin reads the node's pods waiting for their devices, and marks them taken."""

    def allocating_pods(self, node: str) -> list[PodInfo]:
        """Pods bound to `node` whose `tessera.io/allocation` annotation is still "allocating"."""
        ...

    def mark_allocated(self, namespace: str, name: str) -> None:
        """Set the pod's `tessera.io/allocation` annotation to "allocated"; raises if it cannot."""
        ...


class InMemoryPodSource:
    """A `PodSource` over pods held in memory: for tests, and for a node without an API server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], tuple[str, PodInfo]] = {}
        self.marked: list[tuple[str, str]] = []

    def add(self, node: str, pod: PodInfo) -> None:
        """Put `pod` on `node` (replacing a pod of the same namespace and name)."""
        with self._lock:
            self._pods[(pod.namespace, pod.name)] = (node, pod)

    def get(self, namespace: str, name: str) -> PodInfo:
        with self._lock:
            return self._pods[(namespace, name)][1]

    def allocating_pods(self, node: str) -> list[PodInfo]:
        with self._lock:
            return [
                pod
                for on, pod in self._pods.values()
                if on == node and pod.annotations.get(names.ALLOCATION) == names.ALLOCATING
            ]

    def mark_allocated(self, namespace: str, name: str) -> None:
        with self._lock:
            node, pod = self._pods[(namespace, name)]
            annotations = {**pod.annotations, names.ALLOCATION: names.ALLOCATED}
            self._pods[(namespace, name)] = (node, replace(pod, annotations=annotations))
            self.marked.append((namespace, name))
