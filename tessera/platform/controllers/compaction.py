"""Keep the change log bounded, like etcd's compaction."""

from __future__ import annotations

from tessera.platform.store.db import Database
from tessera.platform.store.feed import compact


def compact_change_log(db: Database, retention: int) -> int:
    """Drop change-log entries older than ``retention`` revisions; returns how many."""
    head = db.current_revision()
    if head <= retention:
        return 0
    with db.write() as tx:
        return compact(tx.session, head - retention)
