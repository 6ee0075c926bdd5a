"""Classifier tokens, training ledger, personal blacklists, used block-report links.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("bayes_seq", "bayes_generation", "bayes_spam", "bayes_ham", "personal_blacklist")


def upgrade() -> None:
    op.create_table(
        "bayes_tokens",
        sa.Column("token", sa.String(255), nullable=False),
        sa.Column("spam", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ham", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("token", name="pk_bayes_tokens"),
    )
    op.create_index("ix_bayes_tokens_seq", "bayes_tokens", ["seq"])
    op.create_table(
        "training_ledger",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("label", sa.String(4), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("who", sa.String(320), nullable=False, server_default=""),
        sa.Column("subject", sa.Text(), nullable=False, server_default=""),
        sa.Column("learned_at", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_training_ledger"),
    )
    op.create_index(
        "ix_training_ledger_label_learned_at", "training_ledger", ["label", "learned_at"]
    )
    op.create_table(
        "personal_blacklist",
        sa.Column("owner", sa.String(320), nullable=False),
        sa.Column("value", sa.String(1000), nullable=False),
        sa.Column("added_by", sa.String(320), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint("owner", "value", name="pk_personal_blacklist"),
    )
    op.create_table(
        "used_links",
        sa.Column("link_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("txid", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint("link_id", name="pk_used_links"),
    )
    op.create_index("ix_used_links_expires_at", "used_links", ["expires_at"])
    counters = sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(counters, [{"name": name, "value": 0} for name in COUNTERS])


def downgrade() -> None:
    counters = sa.table("counters", sa.column("name", sa.String))
    op.execute(counters.delete().where(counters.c.name.in_(COUNTERS)))
    op.drop_index("ix_used_links_expires_at", table_name="used_links")
    op.drop_table("used_links")
    op.drop_table("personal_blacklist")
    op.drop_index("ix_training_ledger_label_learned_at", table_name="training_ledger")
    op.drop_table("training_ledger")
    op.drop_index("ix_bayes_tokens_seq", table_name="bayes_tokens")
    op.drop_table("bayes_tokens")
