"""live adapters: each endpoint's adapter set, and the versions each replica serves

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_versions", sa.JSON(), nullable=True))
    op.create_table(
        "endpoint_adapters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("endpoint_id", sa.Integer(), sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("revision", sa.String(256), nullable=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("ready_replicas", sa.Integer(), nullable=False),
        sa.Column("target_replicas", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("endpoint_id", "name", name="uq_endpoint_adapters_name"),
    )
    op.create_index("ix_endpoint_adapters_endpoint_id", "endpoint_adapters", ["endpoint_id"])


def downgrade() -> None:
    op.drop_index("ix_endpoint_adapters_endpoint_id", table_name="endpoint_adapters")
    op.drop_table("endpoint_adapters")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("adapter_versions")
