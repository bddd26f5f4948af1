"""execution: task attempts and messages, node agent endpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("message", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_url", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("agent_secret", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("agent_secret")
        batch_op.drop_column("agent_url")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("message")
        batch_op.drop_column("attempt")
