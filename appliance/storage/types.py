"""Column types shared by every storage table.

Timestamps are stored as naive UTC in a plain ``TIMESTAMP`` column, which means the same
thing on SQLite (ISO text that sorts correctly) and PostgreSQL (``timestamp without time
zone``). Python code only ever sees timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def require_aware(value: datetime, name: str) -> datetime:
    """Refuse naive datetimes with a clear message and return `value` converted to UTC."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in Python, naive UTC in the database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return require_aware(value, "timestamp").replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed: datetime = (
            datetime.fromisoformat(value) if isinstance(value, str) else value
        )  # a string: a bucket expression computed by SQLite
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        return parsed.replace(tzinfo=UTC)
