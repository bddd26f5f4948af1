"""datasets: secrets, datasets, their per-node caches and loads

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _identity(table: str) -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("data", JSONDoc, nullable=False),
        *_identity("secrets"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_secrets_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_secrets_project_id")),
    )
    op.create_table(
        "datasets",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec", JSONDoc, nullable=False),
        sa.Column("status", JSONDoc, nullable=False),
        sa.Column("manifest", JSONDoc, nullable=True),
        *_identity("datasets"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_datasets_project_id_projects"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_datasets_project_id")),
    )
    op.create_table(
        "dataset_caches",
        sa.Column("dataset_id", sa.Uuid(), nullable=False),
        sa.Column("node", sa.String(length=63), nullable=False),
        sa.Column("cached_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cached_files", sa.Integer(), nullable=False),
        sa.Column("local_hits", sa.BigInteger(), nullable=False),
        sa.Column("peer_hits", sa.BigInteger(), nullable=False),
        sa.Column("source_reads", sa.BigInteger(), nullable=False),
        *_identity("dataset_caches"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_caches_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_caches")),
        sa.UniqueConstraint("dataset_id", "node", name=op.f("uq_dataset_caches_dataset_id")),
    )
    op.create_table(
        "data_loads",
        sa.Column("dataset_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("nodes", JSONDoc, nullable=False),
        sa.Column("include", JSONDoc, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        *_identity("data_loads"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_data_loads_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_loads")),
        sa.UniqueConstraint("dataset_id", "number", name=op.f("uq_data_loads_dataset_id")),
    )


def downgrade() -> None:
    op.drop_table("data_loads")
    op.drop_table("dataset_caches")
    op.drop_table("datasets")
    op.drop_table("secrets")
