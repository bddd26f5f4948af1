"""The agent's view of its assignments: list + watch from the control plane, cached on disk."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from tessera.api.jobs import Job

log = logging.getLogger(__name__)


class Relist(Exception):
    """The feed's history no longer reaches our revision: list again."""


class AssignmentFeed:
    """Jobs with tasks on this node, kept current by list + watch (resource version = revision).

    The last state is written to ``assignments.json`` so the agent keeps
    enforcing and reporting what it knew while the control plane is down.
    """

    def __init__(self, http: httpx.Client, node: str, cache: Path, on_change: threading.Event) -> None:
        self.http = http
        self.node = node
        self.cache = cache
        self.on_change = on_change
        self.lock = threading.Lock()
        self.jobs: dict[uuid.UUID, Job] = {}
        self.revision = -1
        self.listed = False  # True once a list from the control plane (not the cache) is held
        self._load_cache()

    def _load_cache(self) -> None:
        try:
            doc = json.loads(self.cache.read_text())
            self.jobs = {j.id: j for j in (Job.model_validate(x) for x in doc["jobs"])}
            self.revision = int(doc["revision"])
        except (FileNotFoundError, ValueError, KeyError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("ignoring unreadable assignment cache %s: %s", self.cache, exc)

    def _save_cache(self) -> None:
        doc: dict[str, Any] = {
            "revision": self.revision,
            "jobs": [j.model_dump(mode="json") for j in self.jobs.values()],
        }
        tmp = self.cache.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc))
            fh.flush()
            os.fsync(fh.fileno())  # a crash must never leave an empty cache behind
        os.replace(tmp, self.cache)

    def snapshot(self) -> dict[uuid.UUID, Job]:
        with self.lock:
            return dict(self.jobs)

    def relist(self) -> None:
        response = self.http.get(f"/api/v1/nodes/{self.node}/assignments")
        response.raise_for_status()
        page = response.json()
        with self.lock:
            self.jobs = {j.id: j for j in (Job.model_validate(x) for x in page["items"])}
            self.revision = int(page["revision"])
            self.listed = True
            self._save_cache()
        self.on_change.set()

    def watch_once(self, timeout: float = 30) -> None:
        """Follow the change feed for up to ``timeout`` seconds (relisting if it was compacted)."""
        if not self.listed:
            self.relist()
        # only the jobs that come to this node or leave it (the control plane filters)
        params: dict[str, Any] = {
            "since": self.revision,
            "kind": "job",
            "node": self.node,
            "timeout": timeout,
        }
        with self.http.stream(
            "GET", "/api/v1/watch", params=params, timeout=httpx.Timeout(10, read=timeout + 30)
        ) as response:
            if response.status_code == 410:
                self.listed = False
                return
            response.raise_for_status()
            for line in response.iter_lines():
                if line:
                    self._apply(json.loads(line))

    def _apply(self, item: dict[str, Any]) -> None:
        if item.get("type") == "ERROR":
            raise Relist(str(item.get("detail", "watch ended with an error")))
        with self.lock:
            if item["type"] == "BOOKMARK":
                self.revision = max(self.revision, int(item["revision"]))
                return
            job_id = uuid.UUID(item["id"])
            if item["op"] == "delete" or item["object"] is None:
                changed = self.jobs.pop(job_id, None) is not None
            else:
                job = Job.model_validate(item["object"])
                if any(t.node == self.node for t in job.tasks):
                    self.jobs[job_id], changed = job, True
                else:  # it left this node (rebound elsewhere, pruned): its tasks here stop
                    changed = self.jobs.pop(job_id, None) is not None
            self.revision = int(item["revision"])
            if changed:
                self._save_cache()
        if changed:
            self.on_change.set()

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop``; back off while the control plane is unreachable."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.watch_once()
                delay = 0.5
            except Relist as exc:
                log.info("re-listing assignments: %s", exc)
                self.listed = False
            except Exception as exc:  # the watch must outlive any one failure
                log.info("assignment watch interrupted (%s); retrying in %.1fs", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5)
