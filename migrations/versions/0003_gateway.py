"""endpoint gateway: replica draining, per-adapter usage, gateway load

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COUNTERS = ("requests", "errors", "input_tokens", "output_tokens")


def _endpoint_id(**kwargs: bool) -> sa.Column:
    return sa.Column("endpoint_id", sa.Integer(), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), **kwargs)


def _counters() -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS]


def upgrade() -> None:
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drain_started_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("usage_seen", sa.JSON(), nullable=True))
    op.create_table(
        "endpoint_usage",
        sa.Column("id", sa.Integer(), primary_key=True),
        _endpoint_id(nullable=False),
        sa.Column("adapter", sa.String(256), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        *_counters(),
        sa.Column("ttft_buckets", sa.JSON(), nullable=True),
        sa.Column("latency_buckets", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("endpoint_id", "adapter", "source", name="uq_endpoint_usage_key"),
    )
    op.create_index("ix_endpoint_usage_endpoint_id", "endpoint_usage", ["endpoint_id"])
    op.create_table(
        "endpoint_usage_minutes",
        sa.Column("id", sa.Integer(), primary_key=True),
        _endpoint_id(nullable=False),
        sa.Column("adapter", sa.String(256), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("minute", sa.DateTime(), nullable=False),
        *_counters(),
        sa.UniqueConstraint("endpoint_id", "adapter", "source", "minute", name="uq_endpoint_usage_minute"),
    )
    op.create_index(
        "ix_endpoint_usage_minutes_endpoint_minute", "endpoint_usage_minutes", ["endpoint_id", "minute"]
    )
    op.create_table(
        "gateway_load",
        sa.Column("gateway_id", sa.String(64), primary_key=True),
        _endpoint_id(primary_key=True),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gateway_load")
    op.drop_index("ix_endpoint_usage_minutes_endpoint_minute", table_name="endpoint_usage_minutes")
    op.drop_table("endpoint_usage_minutes")
    op.drop_index("ix_endpoint_usage_endpoint_id", table_name="endpoint_usage")
    op.drop_table("endpoint_usage")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("usage_seen")
        batch_op.drop_column("drain_started_at")
