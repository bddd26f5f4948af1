"""The device plugin's `PodSource` over the API server: the node's pods from an informer's cache.

The node agent keeps one informer of the pods bound to its node (``spec.nodeName=<node>``, every
namespace); Allocate reads the ones still "allocating" from its cache and marks the chosen one
"allocated" with a merge patch of its annotation. The kubelet learns of a bound pod through its own
watch, so an Allocate may come before this cache has the pod: when the cache shows no pod waiting,
the pods are listed from the API server instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from tessera.kube import names
from tessera.kube.client import Kube, Obj, pod_path
from tessera.kube.deviceplugin.pods import PodInfo
from tessera.kube.informer import Informer

ALL_PODS = "/api/v1/pods"
_DONE = ("Succeeded", "Failed")


def node_selector(node: str) -> str:
    """The field selector of the pods bound to `node`."""
    return f"spec.nodeName={node}"


def node_pod_informer(kube: Kube, node: str, changed: threading.Event | None = None) -> Informer:
    """An informer (not started) of every pod bound to `node`, in every namespace."""
    return Informer(kube, ALL_PODS, field_selector=node_selector(node), changed=changed)


def _waiting(pods: Iterable[Obj], node: str) -> list[PodInfo]:
    out = []
    for pod in pods:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        if spec.get("nodeName") != node or meta.get("deletionTimestamp") or status.get("phase") in _DONE:
            continue  # elsewhere, or going away: the kubelet is not starting it
        if (meta.get("annotations") or {}).get(names.ALLOCATION) == names.ALLOCATING:
            out.append(PodInfo.from_pod(pod))
    return out


class PodSnapshot(Protocol):
    """What the source reads pods from: an `Informer`'s cache."""

    def snapshot(self) -> list[Obj]: ...


class ApiPodSource:
    """`PodSource` for `DevicePlugin`: pods from `informer` (see `node_pod_informer`), marks through
    `kube`."""

    def __init__(self, kube: Kube, informer: PodSnapshot) -> None:
        self.kube = kube
        self.informer = informer

    def allocating_pods(self, node: str) -> list[PodInfo]:
        pods = _waiting(self.informer.snapshot(), node)
        if pods:
            return pods
        # the kubelet is starting a pod this cache does not show waiting yet: ask the API server
        listing = self.kube.list(ALL_PODS, field_selector=node_selector(node))
        return _waiting(listing.get("items") or [], node)

    def mark_allocated(self, namespace: str, name: str) -> None:
        patch = {"metadata": {"annotations": {names.ALLOCATION: names.ALLOCATED}}}
        self.kube.merge_patch(pod_path(namespace, name), patch)
