"""The client side of a forwarded request: its body (the first ASGI message read ahead, the rest
streamed to the replica as the client sends it) and a watch that notices the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

from tessera.gateway.problems import Receive


class ClientGone(Exception):
    """The client disconnected while its body was being forwarded."""


class Body:
    """A request body. ``payload()`` is what to send upstream; a new one per attempt, which is
    only made while the previous attempt consumed nothing (``replayable``)."""

    EMPTY: ClassVar[Body]

    __slots__ = ("_receive", "first", "more", "pulled", "gone")

    def __init__(self, receive: Receive | None, first: bytes, more: bool) -> None:
        self._receive = receive
        self.first = first
        self.more = more  # the client has more to send
        self.pulled = False  # an upstream request started taking the body
        self.gone = False  # the client disconnected

    @classmethod
    async def read(cls, receive: Receive) -> Body:
        """Read the first body message; a small body arrives whole in it."""
        message = await receive()
        if message["type"] == "http.disconnect":
            body = cls(None, b"", False)
            body.gone = True
            return body
        return cls(receive, message.get("body", b""), bool(message.get("more_body", False)))

    @property
    def complete(self) -> bool:
        """Nothing more to receive from the client (so ``receive`` only reports a disconnect)."""
        return not self.more

    @property
    def replayable(self) -> bool:
        """No byte of the body can have reached a replica yet."""
        if self.pulled:
            return False
        return self.more or not self.first  # not streamed yet, or empty

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        if not self.more:
            return self.first or None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.pulled = True
        assert self._receive is not None
        if self.first:
            yield self.first
        while self.more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone("the client disconnected during the upload")
            self.more = bool(message.get("more_body", False))
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk


Body.EMPTY = Body(None, b"", False)


class ClientWatch:
    """Waits (in a task) for the client to disconnect; only once the body was fully received,
    since it calls ``receive``. Calls ``on_gone`` then (e.g. to abort the upstream response)."""

    __slots__ = ("task", "gone", "on_gone", "_stopped")

    def __init__(self, receive: Receive, on_gone: Callable[[], None] | None = None) -> None:
        self.gone = False
        self.on_gone = on_gone
        self._stopped = False
        self.task = asyncio.ensure_future(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._stopped:
            return
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    def stop(self) -> None:
        self._stopped = True
        self.task.cancel()
