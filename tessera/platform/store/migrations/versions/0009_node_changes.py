"""node-scoped watches: each job change names the nodes it concerns; jobs remember where they are

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("changes", sa.Column("nodes", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("placed_nodes", sa.Text(), nullable=True))
    # where each existing job is, so its next change tells the nodes it leaves (changes logged
    # before this migration have no tag and reach every node's watch)
    conn = op.get_bind()
    tasks = sa.table("tasks", sa.column("job_id", sa.Uuid()), sa.column("node", sa.String()))
    jobs = sa.table("jobs", sa.column("id", sa.Uuid()), sa.column("placed_nodes", sa.Text()))
    placed: dict[object, set[str]] = {}
    for job_id, node in conn.execute(
        sa.select(tasks.c.job_id, tasks.c.node).where(tasks.c.node.is_not(None))
    ):
        placed.setdefault(job_id, set()).add(node)
    for job_id, nodes in placed.items():
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(placed_nodes=",".join(sorted(nodes))))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch rebuild would drop the jobs table, and
    # with foreign keys on that cascades to every task, attempt and allocation
    op.drop_column("jobs", "placed_nodes")
    op.drop_column("changes", "nodes")
