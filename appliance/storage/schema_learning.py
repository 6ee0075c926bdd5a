"""Tables of the learning loop: the classifier's tokens, the training ledger, the users'
personal blacklists and the block-report links already used.

Declared on the shared `metadata` (``schema.py`` imports this module), so the migration
test compares them like every other table. Portable types only.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from appliance.storage.schema import metadata
from appliance.storage.types import UTCDateTime

# One row per token: weighted message counts per class, and the learn sequence number of
# its last change, so that proxies fetch only what changed since they last looked.
bayes_tokens = Table(
    "bayes_tokens",
    metadata,
    Column("token", String(255), primary_key=True),
    Column("spam", BigInteger, nullable=False, server_default="0"),
    Column("ham", BigInteger, nullable=False, server_default="0"),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_bayes_tokens_seq", "seq"),
)

# Every message ever learned, once: what it was learned as, from where, by whom, when.
training_ledger = Table(
    "training_ledger",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("source", String(16), nullable=False),
    Column("weight", Integer, nullable=False),
    Column("who", String(320), nullable=False, server_default=""),
    Column("subject", Text, nullable=False, server_default=""),
    Column("learned_at", UTCDateTime, nullable=False),
    Index("ix_training_ledger_label_learned_at", "label", "learned_at"),
)

personal_blacklist = Table(
    "personal_blacklist",
    metadata,
    Column("owner", String(320), primary_key=True),
    Column("value", String(1000), primary_key=True),
    Column("added_by", String(320), nullable=False, server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
)

# One-click links of block reports that were used: a second click is a replay.
used_links = Table(
    "used_links",
    metadata,
    Column("link_id", String(64), primary_key=True),
    Column("action", String(32), nullable=False),
    Column("txid", String(64), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("used_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_used_links_expires_at", "expires_at"),
)
