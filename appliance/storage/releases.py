"""Which kept messages were released from quarantine, by whom, with Postfix's answer.

A release is *claimed* (a row inserted under the transaction id's primary key) before
the message is handed to Postfix, so two clicks, two administrators or two processes
can never deliver it twice. A failed hand-over gives the claim back; a crash between
Postfix's 250 and `complete` leaves the claim in place, which errs on "at most once".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from appliance.storage.engine import Database
from appliance.storage.schema import quarantine_releases
from appliance.storage.types import utcnow

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Release:
    txid: str
    folder: str
    released_at: datetime
    released_by: str
    state: str  # "sending" or "delivered"
    reply: str


class ReleaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, txid: str, folder: str, username: str) -> bool:
        """Reserve the release of `txid`; False if it was released (or is being) already."""
        try:
            with self._db.write() as conn:
                conn.execute(
                    insert(quarantine_releases).values(
                        txid=txid,
                        folder=folder,
                        released_at=utcnow(),
                        released_by=username[:64],
                        state="sending",
                        reply="",
                    )
                )
        except IntegrityError:
            return False
        return True

    def complete(self, txid: str, reply: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                update(quarantine_releases)
                .where(quarantine_releases.c.txid == txid)
                .values(state="delivered", reply=reply)
            )

    def abandon(self, txid: str) -> None:
        """Give a claim back after a failed hand-over, so the release can be retried."""
        with self._db.write() as conn:
            conn.execute(
                delete(quarantine_releases).where(
                    quarantine_releases.c.txid == txid,
                    quarantine_releases.c.state == "sending",
                )
            )

    def get(self, txid: str) -> Release | None:
        return self.for_ids([txid]).get(txid)

    def for_ids(self, txids: Iterable[str]) -> dict[str, Release]:
        ids = list(dict.fromkeys(txids))
        found: dict[str, Release] = {}
        t = quarantine_releases
        with self._db.read() as conn:
            for start in range(0, len(ids), _CHUNK):
                for row in conn.execute(select(t).where(t.c.txid.in_(ids[start : start + _CHUNK]))):
                    release = _release(row._mapping)
                    found[release.txid] = release
        return found


def _release(row: Any) -> Release:
    return Release(
        txid=row["txid"],
        folder=row["folder"],
        released_at=row["released_at"],
        released_by=row["released_by"],
        state=row["state"],
        reply=row["reply"],
    )
