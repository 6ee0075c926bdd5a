"""Message log with its recipients and symbols.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_log",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("listener", sa.String(16), nullable=False),
        sa.Column("client_ip", sa.String(45), nullable=False),
        sa.Column("helo", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("downstream_reply", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("quarantine_path", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_message_log"),
    )
    op.create_index("ix_message_log_time", "message_log", ["time"])
    op.create_index("ix_message_log_client_ip", "message_log", ["client_ip"])
    op.create_index("ix_message_log_action_time", "message_log", ["action", "time"])
    for table, columns in (
        ("message_recipients", [sa.Column("address", sa.Text(), nullable=False)]),
        (
            "message_symbols",
            [
                sa.Column("name", sa.String(128), nullable=False),
                sa.Column("score", sa.Float(), nullable=False),
                sa.Column("reason", sa.Text(), nullable=False),
            ],
        ),
    ):
        op.create_table(
            table,
            sa.Column("message_id", sa.String(64), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
            *columns,
            sa.ForeignKeyConstraint(
                ["message_id"],
                ["message_log.id"],
                name=f"fk_{table}_message_id_message_log",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("message_id", "position", name=f"pk_{table}"),
        )
    op.create_index("ix_message_recipients_address", "message_recipients", ["address"])
    op.create_index("ix_message_symbols_name", "message_symbols", ["name"])


def downgrade() -> None:
    op.drop_table("message_symbols")
    op.drop_table("message_recipients")
    op.drop_table("message_log")
