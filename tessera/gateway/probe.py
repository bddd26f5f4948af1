"""Readiness probes: every replica in the table that is not draining is probed with
``GET http://{endpoint}{readiness_path}`` — every ~0.1 s until it answers 2xx/3xx, then every
~2 s. A ready replica whose probe is refused or answers an error becomes unready."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from tessera.gateway.routes import ReplicaState, Router

log = logging.getLogger(__name__)

PENDING_PERIOD = 0.1
READY_PERIOD = 2.0
TIMEOUT = 1.0
_TICK = 0.05


class Prober:
    """Probes replicas on the gateway's loop; calls ``on_ready`` when one becomes ready."""

    def __init__(
        self,
        router: Router,
        session: aiohttp.ClientSession,
        on_ready: Callable[[ReplicaState], None],
        *,
        pending_period: float = PENDING_PERIOD,
        ready_period: float = READY_PERIOD,
        timeout: float = TIMEOUT,
    ) -> None:
        self.router = router
        self.session = session
        self.on_ready = on_ready
        self.pending_period = pending_period
        self.ready_period = ready_period
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.tick(time.monotonic())
                except Exception:  # a bug must not stop the probing for good
                    log.exception("starting readiness probes failed")
                await asyncio.sleep(_TICK)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def tick(self, now: float) -> None:
        """Start the probes that are due."""
        for replica in self.router.replicas.values():
            if replica.draining or replica.probing:
                continue
            period = self.ready_period if replica.ready else self.pending_period
            if now - replica.last_probe < period:
                continue
            replica.probing = True
            replica.last_probe = now
            task = asyncio.create_task(self.probe(replica))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def probe(self, replica: ReplicaState) -> None:
        url = f"http://{replica.endpoint}{replica.path}"
        failures = replica.failures
        passed: bool | None
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=False) as response:
                passed = response.status < 400
                detail = f"HTTP {response.status}"
        except TimeoutError:
            passed = None if replica.ready else False  # a busy ready replica stays ready
            detail = "timed out"
        except aiohttp.ClientError as exc:
            passed = False
            detail = f"{type(exc).__name__}: {exc}"
        finally:
            replica.probing = False
        if passed is None:
            log.debug("readiness probe of %s (%s) %s; keeping it ready", replica.id, url, detail)
        elif passed and not replica.ready and replica.failures == failures:
            replica.ready = True
            log.debug("replica %s at %s is ready", replica.id, replica.endpoint)
            self.on_ready(replica)
        elif not passed and replica.ready:
            replica.ready = False
            log.info("replica %s at %s failed its readiness probe (%s)", replica.id, replica.endpoint, detail)
