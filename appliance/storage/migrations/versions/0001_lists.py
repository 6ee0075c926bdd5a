"""Lists with expiry and the change counters.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    op.bulk_insert(counters, [{"name": "lists", "value": 0}])
    op.create_table(
        "list_entries",
        sa.Column("list_name", sa.String(32), nullable=False),
        sa.Column("value", sa.String(1000), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
        sa.Column("added_by", sa.String(255), nullable=False, server_default=""),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=False), nullable=True),
        sa.PrimaryKeyConstraint("list_name", "value", name="pk_list_entries"),
    )
    op.create_index("ix_list_entries_expires_at", "list_entries", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_list_entries_expires_at", table_name="list_entries")
    op.drop_table("list_entries")
    op.drop_table("counters")
