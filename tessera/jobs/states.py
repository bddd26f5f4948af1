"""The job state machine: one table and one function that performs every transition.

The table is DESIGN.md's, extended where it proved incomplete:

* ``DeadlineExceeded`` can fail a job from any live state, not only
  PENDING (a deadline is the job's whole lifetime, like Kubernetes'
  ``activeDeadlineSeconds``).
* ``PREEMPTED -> FAILED`` with ``RetriesExhausted``: an evicted job whose
  retry budget is spent must end rather than requeue forever.
* ``SCHEDULED -> FAILED`` with ``StartError``: a node may refuse a task
  (image unsupported) before it reaches STARTING.
* An elastic job may be preempted while RESIZING or RECOVERING (it holds its
  gang all the while), and a worker may fail while it RESIZES
  (``RESIZING -> RECOVERING``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tessera.api.events import EventType
from tessera.api.jobs import JobState, JobStatus, PendingReason, TerminalReason

S = JobState
R = TerminalReason

_LIVE = frozenset(s for s in JobState if not s.terminal)

# to-state -> from-states that may reach it
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.SCHEDULED: frozenset({S.PENDING}),
    S.STARTING: frozenset({S.SCHEDULED}),
    S.RUNNING: frozenset({S.STARTING, S.RESIZING, S.RECOVERING}),
    S.PENDING: frozenset({S.SCHEDULED, S.STARTING, S.PREEMPTED, S.RUNNING}),
    S.PREEMPTED: frozenset({S.RUNNING, S.RESIZING, S.RECOVERING}),
    S.RESIZING: frozenset({S.RUNNING}),
    S.RECOVERING: frozenset({S.RUNNING, S.RESIZING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.FAILED: _LIVE,
    S.CANCELLED: _LIVE,
}

# to-state FAILED: which reasons each from-state allows
_FAIL_REASONS: dict[JobState, frozenset[TerminalReason]] = {
    S.PENDING: frozenset({R.DEADLINE_EXCEEDED, R.QUEUE_DELETED}),
    S.SCHEDULED: frozenset({R.DEADLINE_EXCEEDED, R.START_ERROR}),
    S.STARTING: frozenset({R.DEADLINE_EXCEEDED, R.START_ERROR}),
    S.RUNNING: frozenset(
        {R.ERROR, R.SLICE_OOM, R.HOST_OOM, R.NODE_LOST, R.EVICTED, R.RETRIES_EXHAUSTED, R.DEADLINE_EXCEEDED}
    ),
    S.PREEMPTED: frozenset({R.RETRIES_EXHAUSTED, R.DEADLINE_EXCEEDED}),
    S.RESIZING: frozenset({R.ERROR, R.RETRIES_EXHAUSTED, R.DEADLINE_EXCEEDED}),
    S.RECOVERING: frozenset({R.ERROR, R.RETRIES_EXHAUSTED, R.DEADLINE_EXCEEDED}),
}

# moves back to PENDING that start a new attempt
_NEW_ATTEMPT_FROM = frozenset({S.SCHEDULED, S.STARTING, S.PREEMPTED, S.RUNNING})


class InvalidTransition(ValueError):
    """A transition the state machine does not allow."""

    def __init__(self, current: JobState, to: JobState, detail: str = "") -> None:
        self.current = current
        self.to = to
        allowed = ", ".join(sorted(allowed_targets(current))) or "none (terminal)"
        super().__init__(
            f"cannot move a {current} job to {to}{': ' + detail if detail else ''}; "
            f"from {current} it may move to: {allowed}"
        )


@dataclass(frozen=True)
class EventDraft:
    """An event before the store gives it an id and revision."""

    type: EventType
    reason: str
    message: str
    from_state: JobState
    to_state: JobState


@dataclass(frozen=True)
class Transition:
    status: JobStatus
    event: EventDraft


def allowed_targets(current: JobState) -> set[JobState]:
    """States a job in ``current`` may move to."""
    return {to for to, sources in TRANSITIONS.items() if current in sources}


def transition(
    status: JobStatus,
    to: JobState,
    *,
    at: datetime,
    reason: TerminalReason | str | None = None,
    message: str = "",
    exit_code: int | None = None,
    pending_reason: PendingReason | None = None,
) -> Transition:
    """Compute a job's next status and the event recording the move.

    Raises :class:`InvalidTransition` for a move the table forbids. This is
    the only place a job's state changes; the store applies the result and
    the event in one conditional write.
    """
    current = status.state
    if current not in TRANSITIONS[to]:
        raise InvalidTransition(current, to)
    update: dict[str, object] = {"state": to, "message": message}
    terminal_reason: TerminalReason | None = None
    if to.terminal:
        terminal_reason = _terminal_reason(current, to, reason)
        update.update(reason=terminal_reason, finished_at=at, pending_reason=None)
        if exit_code is not None:
            update["exit_code"] = exit_code
    elif to is S.PENDING:
        update["pending_reason"] = pending_reason or PendingReason(
            code="Requeued", message=message or "waiting to be scheduled again"
        )
        update["started_at"] = None
        update["backfill_until"] = None
        update["master"] = None
        update["workers"] = None  # an elastic job's next attempt is a new Ray cluster and trainer
        update["failures"] = 0
        if current in _NEW_ATTEMPT_FROM:
            update["attempt"] = status.attempt + 1
    else:
        update["pending_reason"] = None
        if to is S.RUNNING and status.started_at is None:
            update["started_at"] = at
    new_status = status.model_copy(update=update)
    event_reason = str(terminal_reason or reason or _default_reason(to))
    warning = to is S.FAILED or to is S.PREEMPTED or (to is S.PENDING and current is not S.PENDING)
    event = EventDraft(
        type=EventType.WARNING if warning else EventType.NORMAL,
        reason=event_reason,
        message=message or f"{current} -> {to}",
        from_state=current,
        to_state=to,
    )
    return Transition(status=new_status, event=event)


def _terminal_reason(current: JobState, to: JobState, reason: TerminalReason | str | None) -> TerminalReason:
    if to is S.SUCCEEDED:
        return R.COMPLETED
    if to is S.CANCELLED:
        return R.CANCELLED
    if reason is None:
        raise InvalidTransition(current, to, "a FAILED transition needs a reason")
    try:
        parsed = TerminalReason(reason)
    except ValueError:
        raise InvalidTransition(current, to, f"unknown reason {reason!r}") from None
    if parsed not in _FAIL_REASONS[current]:
        accepted = ", ".join(sorted(_FAIL_REASONS[current]))
        raise InvalidTransition(
            current, to, f"reason {parsed} is not valid from {current} (accepted: {accepted})"
        )
    return parsed


def _default_reason(to: JobState) -> str:
    return {
        S.PENDING: "Requeued",
        S.SCHEDULED: "Scheduled",
        S.STARTING: "Starting",
        S.RUNNING: "Running",
        S.PREEMPTED: "Preempted",
        S.RESIZING: "Resizing",
        S.RECOVERING: "Recovering",
    }.get(to, str(to))
