"""Block-report links that were used: each link works once, until it expires."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from appliance.storage.engine import Database
from appliance.storage.schema_learning import used_links
from appliance.storage.types import require_aware, utcnow


class UsedLinkStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(
        self, link_id: str, *, action: str, txid: str, recipient: str, expires_at: datetime
    ) -> bool:
        """Mark a link used; False if it was used before (a replay)."""
        try:
            with self._db.write() as conn:
                conn.execute(used_links.insert().values(
                    link_id=link_id, action=action[:32], txid=txid[:64],
                    recipient=recipient[:320], used_at=utcnow(),
                    expires_at=require_aware(expires_at, "expires_at"),
                ))
        except IntegrityError:
            return False
        return True

    def is_used(self, link_id: str) -> bool:
        with self._db.read() as conn:
            return conn.execute(
                select(used_links.c.link_id).where(used_links.c.link_id == link_id)
            ).first() is not None

    def recipients_of(self, txid: str) -> set[str]:
        """The recipients who released message `txid` through a digest link (until the
        link's expiry, when its row is purged)."""
        with self._db.read() as conn:
            return {str(r) for r in conn.execute(
                select(used_links.c.recipient).where(used_links.c.txid == txid)
            ).scalars()}

    def release(self, link_id: str) -> None:
        """Forget a claim whose action then failed, so the link can be tried again."""
        with self._db.write() as conn:
            conn.execute(delete(used_links).where(used_links.c.link_id == link_id))

    def purge_expired(self) -> int:
        """Links past their expiry are refused by their signature anyway."""
        with self._db.write() as conn:
            return int(conn.execute(
                delete(used_links).where(used_links.c.expires_at <= utcnow())
            ).rowcount)
