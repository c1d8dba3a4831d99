"""live adapters: each endpoint's adapter set, and the versions each replica serves

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

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
        sa.Column(
            "endpoint_id", sa.Integer(), sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(1024), nullable=False),
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
    _seed_existing_endpoints()


def _seed_existing_endpoints() -> None:
    """Endpoints created before live adapters get their spec's `LORA_ADAPTERS` as their set (as a
    create does now), so their next replicas start with the same adapters. Digests are left to
    the replicas (a new PUT of a local source records it)."""
    from lorafleet.controlplane.endpoints.adapters import seed_items

    endpoints = sa.table("endpoints", sa.column("id", sa.Integer()), sa.column("spec", sa.JSON()))
    adapters = sa.table(
        "endpoint_adapters",
        *(
            sa.column(c)
            for c in (
                "endpoint_id",
                "name",
                "source",
                "revision",
                "digest",
                "version",
                "state",
                "message",
                "ready_replicas",
                "target_replicas",
                "updated_at",
            )
        ),
    )
    bind = op.get_bind()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for endpoint_id, spec in bind.execute(sa.select(endpoints.c.id, endpoints.c.spec)).all():
        try:
            items = seed_items(spec)
        except Exception:  # a spec the current rules refuse: it keeps an empty set
            continue
        rows += [
            {
                "endpoint_id": endpoint_id,
                "name": i.name[:1024],
                "source": i.source[:1024],
                "revision": i.revision,
                "digest": None,
                "version": 1,
                "state": "pending",
                "message": "",
                "ready_replicas": 0,
                "target_replicas": 0,
                "updated_at": now,
            }
            for i in items
        ]
    if rows:
        op.bulk_insert(adapters, rows)


def downgrade() -> None:
    op.drop_index("ix_endpoint_adapters_endpoint_id", table_name="endpoint_adapters")
    op.drop_table("endpoint_adapters")
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("adapter_versions")
