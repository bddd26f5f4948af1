"""/api/v1/events and /api/v1/watch (the change feed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tessera.api.common import Name
from tessera.api.events import Event
from tessera.platform.auth import UserPrincipal, WatchPrincipal
from tessera.platform.deps import DbDep, SettingsDep
from tessera.platform.routers.responses import COMMON, problems
from tessera.platform.services import events as service
from tessera.platform.store.db import Database
from tessera.platform.store.feed import Compacted, changes_after

router = APIRouter(tags=["events"], responses=COMMON)
BOOKMARK_EVERY = 5.0
MAX_REVISION = 2**63 - 1


@router.get("/events", response_model=list[Event])
async def list_events(
    db: DbDep,
    caller: UserPrincipal,
    kind: str | None = None,
    object_id: uuid.UUID | None = None,
    project: str | None = None,
    after_revision: Annotated[int, Query(ge=0, le=MAX_REVISION)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[Event]:
    return await run_in_threadpool(
        lambda: service.list_events(
            db,
            caller,
            kind=kind,
            object_id=object_id,
            project=project,
            after_revision=after_revision,
            limit=limit,
        )
    )


@router.get(
    "/watch",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "One JSON object per line: a change or a bookmark.",
        },
        **problems(410),
    },
)
async def watch(
    db: DbDep,
    settings: SettingsDep,
    caller: WatchPrincipal,
    since: Annotated[
        int, Query(ge=0, le=MAX_REVISION, description="Stream changes after this revision.")
    ] = 0,
    kind: Annotated[list[str] | None, Query(description="Only these kinds (job, node, ...).")] = None,
    node: Annotated[
        Name | None,
        Query(
            description="A node's name: only the job changes that concern it (its tasks were or "
            "are placed there; a node agent's watch). Changes of other kinds are not filtered.",
        ),
    ] = None,
    timeout: Annotated[float, Query(gt=0, le=3600, description="Seconds before the stream ends.")] = 60,
) -> StreamingResponse:
    """Stream changes after ``since`` as NDJSON, then bookmarks while idle, until ``timeout``.

    Each change line is ``{"type": "CHANGE", "revision", "kind", "id", "op", "object"}``;
    a ``{"type": "BOOKMARK", "revision": N}`` line says nothing visible changed up to N.
    """
    kinds = kind or []
    # check compaction before the 200 starts, so a stale watcher gets a 410
    await run_in_threadpool(lambda: _probe(db, since))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def stream() -> AsyncIterator[bytes]:
        after, caught_up, last_bookmark = since, False, 0.0
        while loop.time() < deadline:
            try:
                changes, resume = await run_in_threadpool(
                    service.read_changes, db, caller, after, kinds, node=node
                )
            except Compacted as exc:
                # headers are sent: say so in-band, then end (the watcher re-lists)
                yield (json.dumps({"type": "ERROR", "status": 410, "detail": str(exc)}) + "\n").encode()
                return
            for change in changes:
                line = {"type": "CHANGE", **change.model_dump(mode="json")}
                yield (json.dumps(line) + "\n").encode()
            if changes:
                caught_up = False
            elif not caught_up or loop.time() - last_bookmark > BOOKMARK_EVERY:
                # tells the watcher it has everything up to ``resume``
                yield (json.dumps({"type": "BOOKMARK", "revision": resume}) + "\n").encode()
                caught_up, last_bookmark = True, loop.time()
            after = resume
            if not changes:
                await asyncio.sleep(settings.watch_poll_seconds)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


def _probe(db: Database, since: int) -> None:
    with db.read() as session:
        changes_after(session, since, limit=1)
