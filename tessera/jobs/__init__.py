"""Job semantics: the state machine, pending reasons, launch contract and runtimes."""

from tessera.jobs.states import (
    TRANSITIONS,
    EventDraft,
    InvalidTransition,
    Transition,
    allowed_targets,
    transition,
)

__all__ = [
    "TRANSITIONS",
    "EventDraft",
    "InvalidTransition",
    "Transition",
    "allowed_targets",
    "transition",
]
