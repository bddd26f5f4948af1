"""The live-job index behind the deadline and prewarm controllers: kept from the change feed,
it must always equal a fresh list of the store, and the controllers must act on it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

from tessera.platform.controllers.datasets import list_sources, prewarm_for_jobs
from tessera.platform.controllers.jobindex import JobIndex
from tessera.platform.controllers.pending import reconcile_pending
from tessera.platform.store.feed import compact
from tessera.platform.store.types import utcnow
from tests.conftest import Api, job_body
from tests.platform.test_datasets_api import create, files, get
from tests.platform.test_execution import node


def _state(index: JobIndex, now: datetime) -> tuple[list[tuple[uuid.UUID, datetime]], set[uuid.UUID]]:
    return sorted(index.due(now)), index.wanted()


def _submit(api: Api, name: str, **fields: object) -> uuid.UUID:
    r = api.call("POST", "/api/v1/jobs", json={**job_body(name), **fields})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


def _dataset(api: Api, tmp_path: Path, name: str) -> uuid.UUID:
    r = create(api, name, f"file://{files(tmp_path / name)}")
    assert r.status_code == 201, r.text
    list_sources(api.db)
    assert get(api, name)["status"]["phase"] == "NotCached"
    return uuid.UUID(r.json()["id"])


def test_the_index_kept_from_the_feed_equals_a_fresh_list(api: Api, tmp_path: Path) -> None:
    later = utcnow() + timedelta(hours=1)
    d = _dataset(api, tmp_path, "d")
    e = _dataset(api, tmp_path, "e")
    index = JobIndex(api.db)
    index.sync()
    assert _state(index, later) == ([], set())

    late = _submit(api, "late", deadline="30m", data=[{"dataset": "d", "locality": "required"}])
    _submit(api, "loose", data=[{"dataset": "e"}])  # preferred: nothing to prewarm
    _submit(api, "ontime", deadline="2h", data=[{"dataset": "e", "locality": "required"}])
    steps = [
        lambda: None,
        lambda: api.call("POST", "/api/v1/jobs/ontime/cancel"),  # ended: no deadline, e not wanted
        lambda: _submit(api, "again", data=[{"dataset": "e", "locality": "required"}]),
        lambda: api.call("DELETE", "/api/v1/jobs/ontime"),
        lambda: api.call("POST", "/api/v1/jobs/late/cancel"),
    ]
    seen = []
    for step in steps:
        step()
        index.sync()
        fresh = JobIndex(api.db)
        fresh.sync()
        assert _state(index, later) == _state(fresh, later)
        seen.append(_state(index, later))
    due, wanted = seen[0]
    assert [job for job, _ in due] == [late] and wanted == {d, e}
    assert seen[1] == (seen[0][0], {d})
    assert seen[2][1] == {d, e}
    assert seen[4] == ([], {e})


def test_a_compacted_feed_makes_the_index_list_again(api: Api) -> None:
    index = JobIndex(api.db)
    index.sync()
    first = _submit(api, "a", deadline="1m")
    with api.db.write() as tx:
        assert compact(tx.session, api.db.current_revision()) > 0
    index.sync()
    assert [job for job, _ in index.due(utcnow() + timedelta(hours=1))] == [first]


def test_deadlines_fail_once_from_the_index(api: Api) -> None:
    index = JobIndex(api.db)
    _submit(api, "late", deadline="30m")
    _submit(api, "ontime", deadline="2h")
    later = utcnow() + timedelta(hours=1)
    assert reconcile_pending(api.db, now=later, index=index) == 1
    assert api.call("GET", "/api/v1/jobs/late").json()["status"]["reason"] == "DeadlineExceeded"
    assert reconcile_pending(api.db, now=later, index=index) == 0  # its end came back through the feed
    assert index.due(later) == []
    assert reconcile_pending(api.db, now=later + timedelta(hours=1), index=index) == 1


def test_prewarm_loads_what_a_pending_job_requires_once(api: Api, tmp_path: Path) -> None:
    node(api)
    _dataset(api, tmp_path, "d")
    _dataset(api, tmp_path, "e")
    index = JobIndex(api.db)
    assert prewarm_for_jobs(api.db, index) == 0  # nothing pending requires either
    _submit(api, "reader", data=[{"dataset": "d", "locality": "required"}])
    _submit(api, "browser", data=[{"dataset": "e"}])
    assert prewarm_for_jobs(api.db, index) == 1
    loads = api.call("GET", "/api/v1/datasets/d/loads").json()
    assert [x["trigger"] for x in loads] == ["job"]
    assert api.call("GET", "/api/v1/datasets/e/loads").json() == []
    assert prewarm_for_jobs(api.db, index) == 0  # already loading: no second load
