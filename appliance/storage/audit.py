"""The audit log: who changed what, from which value to which, and when.

Every state-changing action of the web UI (configuration, lists, quarantine, users)
writes one row; values are stored as short text so the log stays readable as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select

from appliance.storage.engine import Database
from appliance.storage.schema import audit_log
from appliance.storage.types import utcnow

MAX_VALUE_CHARS = 4000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    time: datetime
    username: str
    client_ip: str
    action: str
    target: str
    old_value: str | None
    new_value: str | None


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    return value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 1] + "…"


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        username: str,
        action: str,
        target: str,
        old_value: str | None = None,
        new_value: str | None = None,
        *,
        client_ip: str = "",
    ) -> None:
        with self._db.write() as conn:
            conn.execute(
                insert(audit_log).values(
                    time=utcnow(),
                    username=username[:64],
                    client_ip=client_ip[:45],
                    action=action[:64],
                    target=_clip(target) or "",
                    old_value=_clip(old_value),
                    new_value=_clip(new_value),
                )
            )

    def search(
        self,
        *,
        username: str | None = None,
        action: str | None = None,
        text: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Newest first. `action` matches a prefix ("lists." finds every list change);
        `text` is a case-insensitive substring of the target or either value."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        query = (
            select(audit_log)
            .where(*self._filters(username, action, text))
            .order_by(audit_log.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def count(
        self, *, username: str | None = None, action: str | None = None, text: str | None = None
    ) -> int:
        query = select(func.count()).select_from(audit_log)
        query = query.where(*self._filters(username, action, text))
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _filters(
        username: str | None, action: str | None, text: str | None
    ) -> list[ColumnElement[bool]]:
        t = audit_log
        filters: list[ColumnElement[bool]] = []
        if username:
            filters.append(t.c.username == username)
        if action:
            filters.append(t.c.action.startswith(action, autoescape=True))
        if text:
            filters.append(
                t.c.target.icontains(text, autoescape=True)
                | t.c.old_value.icontains(text, autoescape=True)
                | t.c.new_value.icontains(text, autoescape=True)
            )
        return filters


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        time=row["time"],
        username=row["username"],
        client_ip=row["client_ip"],
        action=row["action"],
        target=row["target"],
        old_value=row["old_value"],
        new_value=row["new_value"],
    )
