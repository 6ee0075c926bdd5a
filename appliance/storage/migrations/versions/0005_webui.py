"""The web UI: its users, failed logins, the audit log and quarantine releases.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webui_users",
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("must_change_password", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=False), nullable=True),
        sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=False), nullable=True),
        sa.PrimaryKeyConstraint("username", name="pk_webui_users"),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("client_ip", sa.String(45), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_client_ip_time", "login_failures", ["client_ip", "time"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("client_ip", sa.String(45), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_table(
        "quarantine_releases",
        sa.Column("txid", sa.String(64), nullable=False),
        sa.Column("folder", sa.String(32), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("released_by", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("txid", name="pk_quarantine_releases"),
    )


def downgrade() -> None:
    op.drop_table("quarantine_releases")
    op.drop_index("ix_audit_log_time", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_login_failures_client_ip_time", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_table("webui_users")
