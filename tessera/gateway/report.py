"""The control-plane sync loop: POST a ``GatewayReport`` to ``/api/v1/gateway/report`` and apply
the ``RouteTable`` it answers. Every ``interval`` seconds; sooner (at most every 0.1 s) when a
request starts being held or a replica becomes ready; every 0.15 s while requests are held. When
the control plane is unreachable the last table stays in force and the loop retries."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from pydantic import ValidationError

from tessera.api.serving import GatewayReport, ReplicaSample, RouteTable
from tessera.gateway.metrics import Metrics
from tessera.gateway.routes import Router

log = logging.getLogger(__name__)

REPORT_PATH = "/api/v1/gateway/report"
MIN_GAP = 0.1  # debounce of triggered reports
HELD_PERIOD = 0.15  # while requests are held
TIMEOUT = 5.0
_QUIET_LOG = 30.0  # repeat "control plane unreachable" at most this often


class Syncer:
    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        *,
        control_url: str,
        token: str,
        name: str,
        url: str,
        interval: float = 1.0,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.session = session
        self.endpoint = control_url.rstrip("/") + REPORT_PATH
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.name = name
        self.url = url
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=min(TIMEOUT, max(interval * 5, 1.0)))
        self._trigger = asyncio.Event()
        self._window_start = time.monotonic()
        self._last_attempt = float("-inf")
        self._failing_since: float | None = None
        self._last_complaint = float("-inf")

    def trigger(self) -> None:
        """Report (and fetch the table) soon: a request is held or a replica became ready."""
        self._trigger.set()

    async def run(self) -> None:
        while True:
            await self._wait()
            try:
                await self.sync()
            except Exception:  # a bug must not stop the syncing for good
                log.exception("syncing with the control plane failed")

    async def _wait(self) -> None:
        while True:
            now = time.monotonic()
            due = self._last_attempt + self.interval
            if self.metrics.held_total > 0:
                due = min(due, self._last_attempt + HELD_PERIOD)
            if self._trigger.is_set():
                due = min(due, self._last_attempt + MIN_GAP)
                if now >= due:
                    break
                await asyncio.sleep(due - now)
                continue
            if now >= due:
                break
            try:  # wake early on a trigger; re-evaluate at least every HELD_PERIOD (held may start)
                await asyncio.wait_for(self._trigger.wait(), min(due - now, HELD_PERIOD))
            except TimeoutError:
                pass
        self._trigger.clear()

    def report(self) -> GatewayReport:
        """This window's report; starts the next window."""
        now = time.monotonic()
        interval = min(max(now - self._window_start, 1e-3), 600.0)
        self._window_start = now
        revisions = self.metrics.snapshot(interval, self.router.keys(), now)
        replicas = [
            ReplicaSample(replica_id=r.id, ready=r.ready, in_flight=r.in_flight)
            for r in self.router.replicas.values()
        ]
        return GatewayReport(
            gateway=self.name,
            url=self.url,
            interval_s=interval,
            routes_revision=max(self.router.revision, 0),
            revisions=revisions,
            replicas=replicas,
        )

    async def sync(self) -> bool:
        """One report and table fetch; whether a table was applied. Never raises (but cancels)."""
        self._last_attempt = time.monotonic()
        body = self.report().model_dump_json()
        try:
            async with self.session.post(
                self.endpoint, data=body, headers=self.headers, timeout=self.timeout
            ) as response:
                payload = await response.read()
                if response.status != 200:
                    self._failed(f"HTTP {response.status}: {payload[:300].decode(errors='replace')}")
                    return False
            table = RouteTable.model_validate_json(payload)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        except ValidationError as exc:
            self._failed(f"the answer is not a route table: {exc}")
            return False
        self.metrics.reports.labels("ok").inc()
        if self._failing_since is not None:
            log.info("control plane reachable again after %.1fs", time.monotonic() - self._failing_since)
            self._failing_since = None
        self.router.apply(table)
        return True

    def _failed(self, detail: str) -> None:
        self.metrics.reports.labels("failed").inc()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_complaint >= _QUIET_LOG:
            self._last_complaint = now
            log.warning(
                "reporting to %s failed (%s); keeping route table revision %d and retrying",
                self.endpoint,
                detail,
                self.router.revision,
            )
        else:
            log.debug("reporting to %s failed (%s)", self.endpoint, detail)
