"""The mechanics of API fairness, free of HTTP: token buckets (request rates) and concurrency
seats handed out by fair queuing across flows (see :mod:`tessera.platform.fairness`).

Everything here runs on the event loop's thread only, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# idle buckets and seat pools are forgotten once this many exist (a flood of client addresses)
_PRUNE_ABOVE = 10_000


class Refused(Exception):
    """A request the limits turn away: ``limit`` names the limit, ``retry_after`` is in seconds."""

    def __init__(self, limit: str, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail
        self.retry_after = max(1, retry_after)


@dataclass
class Bucket:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until one token is there (0 if one is there now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class Rate:
    """One rate limit a request is charged to: a bucket's key, its rate and burst, and how a
    refusal names it."""

    key: str
    rate: float
    burst: int
    limit: str
    detail: str


class Buckets:
    """Token buckets by key, made on first use; a request takes one token from each of its
    buckets or from none."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, rates: Iterable[Rate]) -> None:
        """Take a token from every bucket of ``rates``, or raise :class:`Refused` naming the first
        empty one (and take nothing)."""
        now = self.clock()
        charged: list[Bucket] = []
        for rate in rates:
            bucket = self._buckets.get(rate.key)
            if bucket is None:
                bucket = self._buckets[rate.key] = Bucket(rate.rate, rate.burst, rate.burst, now)
            bucket.rate, bucket.burst = rate.rate, rate.burst  # settings are the truth
            bucket.refill(now)
            if bucket.tokens < 1:
                raise Refused(rate.limit, rate.detail, math.ceil(bucket.wait()))
            charged.append(bucket)
        for bucket in charged:
            bucket.tokens -= 1
        if len(self._buckets) > _PRUNE_ABOVE:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget full buckets: a new one starts full, so nothing is lost."""
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                del self._buckets[key]


@dataclass(eq=False)
class Pool:
    """A concurrency limit: at most ``limit`` requests hold one of its seats at once."""

    name: str
    limit: int
    used: int = 0

    @property
    def free(self) -> bool:
        return self.used < self.limit


@dataclass(eq=False)
class Waiter:
    """A request waiting in its flow's queue for its seats."""

    pools: tuple[Pool, ...]
    future: asyncio.Future[None] = field(repr=False)


class Seats:
    """Concurrency seats with fair queuing: a request needs one seat in each of its pools (its
    lane's, its user's, its projects'). When it cannot have them all at once it waits in its
    flow's queue (FIFO, bounded); a freed seat goes to the flows' queue heads in round-robin order,
    so a flow with a hundred requests waiting gets no more turns than a flow with one."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self._queues: OrderedDict[str, deque[Waiter]] = OrderedDict()

    def pool(self, name: str, limit: int) -> Pool:
        """The pool named ``name`` (made on first use); its limit follows the settings."""
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = Pool(name, limit)
        pool.limit = limit
        return pool

    def waiting(self, flow: str) -> int:
        queue = self._queues.get(flow)
        return len(queue) if queue else 0

    def try_acquire(self, flow: str, pools: tuple[Pool, ...]) -> bool:
        """Take the seats now if they are free and none of the flow's requests waits before this one."""
        if self._queues.get(flow) or not all(p.free for p in pools):
            return False
        _take(pools)
        return True

    async def acquire(self, flow: str, pools: tuple[Pool, ...], queue_length: int, wait: float) -> bool:
        """Take the seats, waiting up to ``wait`` seconds in the flow's queue; True when it waited.
        Raises :class:`Refused` when the queue is full or the wait runs out."""
        if self.try_acquire(flow, pools):
            return False
        await self.wait(flow, self.enqueue(flow, pools, queue_length), wait)
        return True

    def enqueue(self, flow: str, pools: tuple[Pool, ...], queue_length: int) -> Waiter:
        """A place at the back of the flow's queue, or :class:`Refused` if it is full."""
        queue = self._queues.setdefault(flow, deque())
        if len(queue) >= queue_length:
            if not queue:
                del self._queues[flow]
            busy = ", ".join(p.name for p in pools if not p.free) or "its earlier requests"
            raise Refused(
                "queue-full",
                f"{len(queue)} requests of this caller already wait for a seat (queue limit "
                f"{queue_length}); busy: {busy}",
            )
        waiter = Waiter(pools, asyncio.get_running_loop().create_future())
        queue.append(waiter)
        return waiter

    async def wait(self, flow: str, waiter: Waiter, wait: float) -> None:
        """Wait until the seats are handed to ``waiter``, or :class:`Refused` after ``wait`` seconds."""
        try:
            await asyncio.wait({waiter.future}, timeout=wait)
        except asyncio.CancelledError:
            self._abandon(flow, waiter)
            raise
        if not waiter.future.done():
            self._abandon(flow, waiter)
            busy = ", ".join(p.name for p in waiter.pools if not p.free)
            raise Refused("queue-wait", f"no seat came free within {wait:g}s (busy: {busy})")

    def release(self, pools: tuple[Pool, ...]) -> None:
        """Give the seats back and hand freed ones to waiting flows."""
        for pool in pools:
            pool.used -= 1
        self._dispatch()
        if len(self._pools) > _PRUNE_ABOVE:
            self._prune()

    def _abandon(self, flow: str, waiter: Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.pools)  # granted just as its wait ended: give the seats back
            return
        waiter.future.cancel()
        queue = self._queues.get(flow)
        if queue is not None:
            if waiter in queue:
                queue.remove(waiter)
            if not queue:
                del self._queues[flow]
        self._dispatch()  # its place at a queue's head may have blocked others

    def _dispatch(self) -> None:
        """Round robin over the flows that wait: each pass admits at most one request per flow,
        and a flow just served goes to the back of the order."""
        progress = True
        while progress and self._queues:
            progress = False
            for flow in list(self._queues):
                queue = self._queues[flow]
                head = queue[0]
                if not all(p.free for p in head.pools):
                    continue
                queue.popleft()
                _take(head.pools)
                head.future.set_result(None)
                progress = True
                if queue:
                    self._queues.move_to_end(flow)
                else:
                    del self._queues[flow]

    def _prune(self) -> None:
        held = {id(p) for q in self._queues.values() for w in q for p in w.pools}
        for name, pool in list(self._pools.items()):
            if pool.used == 0 and id(pool) not in held:
                del self._pools[name]


def _take(pools: tuple[Pool, ...]) -> None:
    for pool in pools:
        pool.used += 1
