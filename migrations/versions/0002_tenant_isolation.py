"""tenant isolation: replica API keys, endpoint ids never reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_encrypted", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite reuses the largest deleted rowid unless the table is AUTOINCREMENT, which only a
        # rebuilt table can become (PostgreSQL sequences never go back: nothing to do there).
        with op.batch_alter_table(
            "endpoints", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        plain_ids = {"sqlite_autoincrement": False}
        with op.batch_alter_table("endpoints", recreate="always", table_kwargs=plain_ids):
            pass
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("api_key_encrypted")
