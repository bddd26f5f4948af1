"""serving: services, their revisions and replicas; jobs owned by a service (its replicas' workloads)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _identity() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("queue", sa.String(length=63), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("spec", JSONDoc, nullable=False),
        sa.Column("status", JSONDoc, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        *_identity(),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_services_project_id_projects"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_services_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("name", name=op.f("uq_services_name")),
    )
    op.create_table(
        "revisions",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("spec", JSONDoc, nullable=False),
        sa.Column("traffic_percent", sa.Integer(), nullable=False),
        sa.Column("desired_replicas", sa.Integer(), nullable=False),
        sa.Column("panic", sa.Boolean(), nullable=False),
        sa.Column("cold_start_s", sa.Float(), nullable=True),
        *_identity(),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_revisions_service_id_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revisions")),
        sa.UniqueConstraint("service_id", "number", name=op.f("uq_revisions_service_id")),
    )
    op.create_table(
        "replicas",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("node", sa.String(length=63), nullable=True),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("draining_since", sa.DateTime(timezone=True), nullable=True),
        *_identity(),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_replicas_service_id_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
    )
    op.create_index(op.f("ix_replicas_service_id"), "replicas", ["service_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("service_id", sa.Uuid(), nullable=True))
        batch.create_index(op.f("ix_jobs_service_id"), ["service_id"])


def downgrade() -> None:
    # not a batch rebuild: dropping and recreating jobs would cascade to its tasks (foreign keys on)
    op.drop_index(op.f("ix_jobs_service_id"), table_name="jobs")
    op.drop_column("jobs", "service_id")
    op.drop_index(op.f("ix_replicas_service_id"), table_name="replicas")
    op.drop_table("replicas")
    op.drop_table("revisions")
    op.drop_table("services")
