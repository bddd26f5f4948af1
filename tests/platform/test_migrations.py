"""Migration round trip on both databases: upgrade, compare with the models, downgrade."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tessera.platform.store import migrate
from tessera.platform.store.db import Database
from tessera.platform.store.rows import Base


def test_round_trip(db: Database) -> None:
    # the fixture's database is already at head; a second upgrade is a no-op
    migrate.upgrade(db.engine)
    assert migrate.is_current(db.engine)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    assert db.current_revision() == 0  # the counter row exists and starts at zero

    migrate.downgrade(db.engine, "base")
    tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    assert not migrate.is_current(db.engine)

    migrate.upgrade(db.engine)
    assert set(inspect(db.engine).get_table_names()) >= set(Base.metadata.tables)
    assert db.current_revision() == 0
