"""A job's change is logged once per transaction, at its end (Tx.put_later): however many moves it
made, with its final state; a savepoint that rolls back takes its deferred changes back too."""

from __future__ import annotations

import uuid

import pytest

from tessera.api.jobs import JobState
from tessera.platform.controllers.scheduling import SchedulingLoop
from tessera.platform.services.jobs import apply_transition
from tessera.platform.store.feed import changes_after
from tessera.platform.store.rows import JobRow
from tests.conftest import Api, job_body
from tests.platform.test_execution import node


def _job_changes(api: Api, since: int) -> list[tuple[int, str]]:
    with api.db.read() as session:
        changes, _ = changes_after(session, since, kinds=("job",))
    return [(c.revision, c.object["status"]["state"] if c.object else "-") for c in changes]


def test_many_moves_in_one_transaction_are_one_change_with_the_last_state(api: Api) -> None:
    node(api)
    job_id = uuid.UUID(api.call("POST", "/api/v1/jobs", json=job_body("mover")).json()["id"])
    SchedulingLoop(api.db).step()
    assert api.call("GET", "/api/v1/jobs/mover").json()["status"]["state"] == "SCHEDULED"
    since = api.db.current_revision()
    with api.db.write() as tx:
        row = tx.session.get(JobRow, job_id)
        assert row is not None
        apply_transition(tx, row, JobState.STARTING, message="accepted")
        apply_transition(tx, row, JobState.RUNNING, message="started")
        revision = tx.revision
    assert _job_changes(api, since) == [(revision, "RUNNING")]  # one change, the last state
    events = api.call("GET", "/api/v1/events", params={"kind": "job"}).json()
    moves = [
        (e["from_state"], e["to_state"]) for e in events if e["object_name"] == "mover" and e["to_state"]
    ]
    assert moves[-2:] == [("SCHEDULED", "STARTING"), ("STARTING", "RUNNING")]  # each move has its event


def test_a_rolled_back_savepoint_takes_its_deferred_change_back(api: Api) -> None:
    job_id = uuid.UUID(api.call("POST", "/api/v1/jobs", json=job_body("kept")).json()["id"])
    since = api.db.current_revision()
    with api.db.write() as tx:
        row = tx.session.get(JobRow, job_id)
        assert row is not None
        with pytest.raises(RuntimeError), tx.savepoint():
            apply_transition(tx, row, JobState.CANCELLED, message="undone")
            raise RuntimeError("the bind failed")
    assert _job_changes(api, since) == []  # no change logged for a move that never happened
    assert api.call("GET", "/api/v1/jobs/kept").json()["status"]["state"] == "PENDING"
