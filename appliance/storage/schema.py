"""The tables, as SQLAlchemy Core metadata.

This is the target the migrations must produce (a test compares them); the migrations in
``migrations/versions`` are what actually creates and changes the schema. Keep every type
portable to PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from appliance.storage.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Monotonic counters other processes poll to notice changes cheaply (e.g. "lists").
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False, server_default="0"),
)

list_entries = Table(
    "list_entries",
    metadata,
    Column("list_name", String(32), primary_key=True),
    Column("value", String(1000), primary_key=True),
    Column("comment", Text, nullable=False, server_default=""),
    Column("added_by", String(255), nullable=False, server_default=""),
    Column("source", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Index("ix_list_entries_expires_at", "expires_at"),
)

message_log = Table(
    "message_log",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("time", UTCDateTime, nullable=False),
    Column("listener", String(16), nullable=False),
    Column("client_ip", String(45), nullable=False),
    Column("helo", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("total", Float, nullable=False),
    Column("action", String(16), nullable=False),
    Column("reply", Text, nullable=False),
    Column("downstream_reply", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("quarantine_path", Text, nullable=True),
    Index("ix_message_log_time", "time"),
    Index("ix_message_log_client_ip", "client_ip"),
    Index("ix_message_log_action_time", "action", "time"),
)

message_recipients = Table(
    "message_recipients",
    metadata,
    Column(
        "message_id",
        String(64),
        ForeignKey("message_log.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("address", Text, nullable=False),
    Index("ix_message_recipients_address", "address"),
)

message_symbols = Table(
    "message_symbols",
    metadata,
    Column(
        "message_id",
        String(64),
        ForeignKey("message_log.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("name", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_message_symbols_name", "name"),
)

# Greylisting: one row per (client network, sender, recipient) triplet. `passed_at` is
# set when the triplet was retried after the delay; pending rows are "currently delayed".
greylist = Table(
    "greylist",
    metadata,
    Column("client_net", String(64), primary_key=True),
    Column("sender", String(512), primary_key=True),
    Column("recipient", String(512), primary_key=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("passed_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Index("ix_greylist_last_seen", "last_seen"),
    Index("ix_greylist_passed_at_first_seen", "passed_at", "first_seen"),
)

# Client networks that retried greylisted mail: after enough passes they skip it.
greylist_clients = Table(
    "greylist_clients",
    metadata,
    Column("client_net", String(64), primary_key=True),
    Column("passes", Integer, nullable=False, server_default="0"),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Index("ix_greylist_clients_last_seen", "last_seen"),
)

# Penalty box: `score` is the client's score at `updated_at`; it decays from there.
penalty_box = Table(
    "penalty_box",
    metadata,
    Column("client", String(64), primary_key=True),
    Column("score", Float, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("events", Integer, nullable=False, server_default="0"),
    Column("last_reason", String(200), nullable=False, server_default=""),
    Index("ix_penalty_box_updated_at", "updated_at"),
)

# -- the web UI (migration 0005) -------------------------------------------------------

webui_users = Table(
    "webui_users",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("must_change_password", Boolean, nullable=False),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", UTCDateTime, nullable=True),
    # Bumped on a password, role or lock change: every older session cookie stops working.
    Column("session_version", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime, nullable=True),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", UTCDateTime, nullable=False),
    Column("client_ip", String(45), nullable=False),
    Column("username", String(64), nullable=False),
    Index("ix_login_failures_client_ip_time", "client_ip", "time"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", UTCDateTime, nullable=False),
    Column("username", String(64), nullable=False),
    Column("client_ip", String(45), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Index("ix_audit_log_time", "time"),
)

quarantine_releases = Table(
    "quarantine_releases",
    metadata,
    Column("txid", String(64), primary_key=True),
    Column("folder", String(32), nullable=False),
    Column("released_at", UTCDateTime, nullable=False),
    Column("released_by", String(64), nullable=False),
    # "sending" until Postfix answered; a crash in between leaves it claimed (at most once).
    Column("state", String(16), nullable=False),
    Column("reply", Text, nullable=False, server_default=""),
)
# Tables of the classifier and the mail command interface (declared on `metadata`).
import appliance.storage.schema_learning  # noqa: E402,F401
