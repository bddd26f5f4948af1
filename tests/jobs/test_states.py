"""The state machine, table-driven: every (from, to) pair is either allowed or refused."""

from datetime import UTC, datetime

import pytest

from tessera.api.events import EventType
from tessera.api.jobs import JobState, JobStatus, TerminalReason
from tessera.jobs.states import TRANSITIONS, InvalidTransition, allowed_targets, transition

S, R = JobState, TerminalReason
NOW = datetime(2026, 11, 30, tzinfo=UTC)

# DESIGN.md's table (plus the documented extensions), as (from, to, reason)
ALLOWED = [
    (S.PENDING, S.SCHEDULED, None),
    (S.SCHEDULED, S.STARTING, None),
    (S.STARTING, S.RUNNING, None),
    (S.SCHEDULED, S.PENDING, None),
    (S.STARTING, S.PENDING, None),
    (S.STARTING, S.FAILED, R.START_ERROR),
    (S.RUNNING, S.SUCCEEDED, None),
    (S.RUNNING, S.FAILED, R.ERROR),
    (S.RUNNING, S.FAILED, R.SLICE_OOM),
    (S.RUNNING, S.PREEMPTED, None),
    (S.PREEMPTED, S.PENDING, None),
    (S.RUNNING, S.PENDING, None),
    (S.RUNNING, S.RESIZING, None),
    (S.RESIZING, S.RUNNING, None),
    (S.RUNNING, S.RECOVERING, None),
    (S.RECOVERING, S.RUNNING, None),
    (S.RESIZING, S.RECOVERING, None),
    (S.RESIZING, S.PREEMPTED, None),
    (S.RECOVERING, S.PREEMPTED, None),
    (S.RESIZING, S.FAILED, R.RETRIES_EXHAUSTED),
    (S.RECOVERING, S.FAILED, R.ERROR),
    (S.PENDING, S.FAILED, R.DEADLINE_EXCEEDED),
    (S.PENDING, S.FAILED, R.QUEUE_DELETED),
    *[(s, S.CANCELLED, None) for s in S if not s.terminal],
]


def status(state: JobState, attempt: int = 0) -> JobStatus:
    return JobStatus(state=state, submitted_at=NOW, attempt=attempt)


@pytest.mark.parametrize(("src", "dst", "reason"), ALLOWED)
def test_allowed(src: JobState, dst: JobState, reason: TerminalReason | None) -> None:
    moved = transition(status(src), dst, at=NOW, reason=reason)
    assert moved.status.state is dst
    assert moved.event.from_state is src and moved.event.to_state is dst


def test_every_other_pair_is_refused() -> None:
    allowed = {(src, dst) for src, dst, _ in ALLOWED} | {(src, S.FAILED) for src in S if not src.terminal}
    for src in S:
        for dst in S:
            if (src, dst) in allowed:
                continue
            with pytest.raises(InvalidTransition):
                transition(status(src), dst, at=NOW, reason=R.ERROR)


def test_terminal_states_are_final() -> None:
    for state in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        assert allowed_targets(state) == set()


@pytest.mark.parametrize(
    ("src", "reason"),
    [(S.PENDING, R.ERROR), (S.PENDING, None), (S.STARTING, R.SLICE_OOM), (S.RUNNING, "Bogus")],
)
def test_failure_reason_must_fit_the_source(src: JobState, reason: str | None) -> None:
    with pytest.raises(InvalidTransition):
        transition(status(src), S.FAILED, at=NOW, reason=reason)


@pytest.mark.parametrize("src", [S.SCHEDULED, S.STARTING, S.RUNNING, S.PREEMPTED])
def test_requeue_starts_a_new_attempt(src: JobState) -> None:
    moved = transition(status(src, attempt=2), S.PENDING, at=NOW, message="node lost")
    assert moved.status.attempt == 3
    assert moved.status.pending_reason is not None
    assert moved.event.type is EventType.WARNING


def test_terminal_sets_reason_and_time_and_clears_pending() -> None:
    pending = transition(status(S.RUNNING), S.PENDING, at=NOW).status
    assert pending.pending_reason is not None
    done = transition(pending, S.CANCELLED, at=NOW).status
    assert done.reason is R.CANCELLED and done.finished_at == NOW and done.pending_reason is None
    ok = transition(status(S.RUNNING), S.SUCCEEDED, at=NOW, exit_code=0).status
    assert ok.reason is R.COMPLETED and ok.exit_code == 0


def test_running_sets_started_once() -> None:
    moved = transition(status(S.STARTING), S.RUNNING, at=NOW).status
    assert moved.started_at == NOW
    resized = transition(
        moved.model_copy(update={"state": S.RESIZING}), S.RUNNING, at=datetime(2027, 1, 1, tzinfo=UTC)
    ).status
    assert resized.started_at == NOW


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(S)
