"""Pending reasons the control plane gives before a job is placed."""

from __future__ import annotations

from tessera.api.jobs import PendingReason

NO_NODES = PendingReason(code="NoNodes", message="no node has joined yet")
WAITING_FOR_SCHEDULER = PendingReason(
    code="WaitingForScheduler", message="waiting for the next scheduling cycle"
)
