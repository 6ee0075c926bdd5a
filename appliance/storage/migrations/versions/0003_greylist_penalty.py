"""Greylist triplets, greylist client networks and the penalty box.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("greylist", "penalty")


def upgrade() -> None:
    op.create_table(
        "greylist",
        sa.Column("client_net", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=False), nullable=False),
        sa.Column("passed_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("client_net", "sender", "recipient", name="pk_greylist"),
    )
    op.create_index("ix_greylist_last_seen", "greylist", ["last_seen"])
    op.create_index(
        "ix_greylist_passed_at_first_seen", "greylist", ["passed_at", "first_seen"]
    )
    op.create_table(
        "greylist_clients",
        sa.Column("client_net", sa.String(64), nullable=False),
        sa.Column("passes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("first_seen", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint("client_net", name="pk_greylist_clients"),
    )
    op.create_index("ix_greylist_clients_last_seen", "greylist_clients", ["last_seen"])
    op.create_table(
        "penalty_box",
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=False), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_reason", sa.String(200), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("client", name="pk_penalty_box"),
    )
    op.create_index("ix_penalty_box_updated_at", "penalty_box", ["updated_at"])
    counters = sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(counters, [{"name": name, "value": 0} for name in COUNTERS])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM counters WHERE name IN ('greylist', 'penalty')"))
    op.drop_table("penalty_box")
    op.drop_table("greylist_clients")
    op.drop_table("greylist")
