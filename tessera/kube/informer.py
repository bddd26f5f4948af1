"""List-then-watch caches of Kubernetes objects (what client-go calls an informer), in a thread.

It lists, then watches from the list's resourceVersion; when the server says the version is gone
(410) or the stream breaks, it lists again. Readers take snapshots; ``changed`` is set on every
event so a controller can sleep until something happened.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx

from tessera.kube.client import Kube, KubeError, Obj

log = logging.getLogger(__name__)


def key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    def __init__(
        self,
        kube: Kube,
        path: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        changed: threading.Event | None = None,
        on_event: Callable[[str, Obj], None] | None = None,
        watch_timeout: int = 60,
    ) -> None:
        self.kube = kube
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.changed = changed or threading.Event()
        self.on_event = on_event
        self.synced = threading.Event()
        self.watch_timeout = watch_timeout
        self._items: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def get(self, k: str) -> Obj | None:
        with self._lock:
            return self._items.get(k)

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def _relist(self) -> str:
        listing = self.kube.list(self.path, self.label_selector, self.field_selector)
        items = {key(o): o for o in listing.get("items") or []}
        with self._lock:
            gone = [o for k, o in self._items.items() if k not in items]
            self._items = items
        if self.on_event is not None:  # deleted while the watch was down: still said (last state known)
            for obj in gone:
                self.on_event("DELETED", obj)
        self.synced.set()
        self.changed.set()
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        backoff = 0.2
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                for kind, obj in self.kube.watch(
                    self.path, version, self.label_selector, self.field_selector, self.watch_timeout
                ):
                    if self._stop.is_set():
                        return
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "BOOKMARK":
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._items.pop(key(obj), None)
                        else:
                            self._items[key(obj)] = obj
                    if self.on_event is not None:
                        self.on_event(kind, obj)
                    self.changed.set()
                backoff = 0.2
            except KubeError as exc:
                if not exc.gone:
                    log.warning("watch of %s failed: %s", self.path, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                version = None  # list again
            except (httpx.HTTPError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.info("watch of %s broke (%s); listing again", self.path, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                version = None
            except Exception:  # never let the cache go stale silently: log, list again
                log.exception("watch of %s failed; listing again", self.path)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                version = None
