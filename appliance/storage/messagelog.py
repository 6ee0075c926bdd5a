"""The message log: one row per SMTP transaction, with its recipients and symbols.

Recipients and symbols live in child tables, so the log is searchable by recipient (and
later by symbol) with plain indexed SQL on SQLite and PostgreSQL alike. Writes come in
batches from `MessageLogWriter`, which keeps the proxy's event loop off the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exists, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from appliance.storage.engine import Database
from appliance.storage.schema import message_log, message_recipients, message_symbols
from appliance.storage.types import UTCDateTime, require_aware, utcnow
from appliance.storage.writer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_QUEUE,
    BackgroundWriter,
)

LISTENERS: tuple[str, ...] = ("inbound", "relay")
# "aborted": the client left (or every recipient was refused) before an action was taken.
ACTIONS: tuple[str, ...] = (
    "deliver",
    "tag",
    "quarantine",
    "discard",
    "reject",
    "tempfail",
    "aborted",
)
BUCKETS: tuple[str, ...] = ("hour", "day")
MAX_ID_LENGTH = 64
_CHUNK = 500  # ids per IN (...) list: far below every database's parameter limit
_PURGE_CHUNK = 2000  # rows per purge transaction, so writers are not locked out for long

SymbolTuple = tuple[str, float, str]


@dataclass(slots=True)
class MessageLogEntry:
    """One transaction as logged. `symbols` are (name, score, reason); objects with
    those attributes (e.g. `appliance.verdict.Symbol`) are converted. `action` may be
    given as an enum with a `label` (e.g. `Action.REJECT`)."""

    id: str
    time: datetime
    listener: str
    client_ip: str
    helo: str
    sender: str
    recipients: list[str]
    subject: str
    size: int
    symbols: list[SymbolTuple]
    total: float
    action: str
    reply: str
    downstream_reply: str | None = None
    duration_ms: float = 0.0
    quarantine_path: str | None = None

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > MAX_ID_LENGTH:
            raise ValueError(f"transaction id must be 1..{MAX_ID_LENGTH} characters")
        self.time = require_aware(self.time, "time")
        self.listener = str(getattr(self.listener, "value", self.listener))
        if self.listener not in LISTENERS:
            raise ValueError(f"unknown listener {self.listener!r}; expected {LISTENERS}")
        self.action = _action_text(self.action)
        self.recipients = list(self.recipients)
        self.symbols = [_symbol_tuple(s) for s in self.symbols]


def _action_text(action: Any) -> str:
    text = getattr(action, "label", None) or getattr(action, "value", action)
    if text not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return str(text)


def _symbol_tuple(symbol: Any) -> SymbolTuple:
    if hasattr(symbol, "name") and hasattr(symbol, "score"):
        return (str(symbol.name), float(symbol.score), str(getattr(symbol, "reason", "")))
    name, score, reason = symbol
    return (str(name), float(score), str(reason))


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a hostile subject or HELO must not break a batch.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _clean_optional(text: str | None) -> str | None:
    return None if text is None else _clean(text)


class _TimeBucket(FunctionElement[datetime]):
    """The start of the hour/day containing a timestamp column (UTC)."""

    type = UTCDateTime()
    # The unit is part of the SQL text, not a bound parameter, and SQLAlchemy's statement
    # cache key would not include it: an hour bucket's SQL was reused for a day bucket.
    inherit_cache = False

    def __init__(self, unit: str, column: ColumnElement[datetime]) -> None:
        if unit not in BUCKETS:
            raise ValueError(f"unknown bucket {unit!r}; expected one of {', '.join(BUCKETS)}")
        self.unit = unit
        super().__init__(column)


@compiles(_TimeBucket, "sqlite")
def _time_bucket_sqlite(element: _TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    fmt = "%Y-%m-%d %H:00:00" if element.unit == "hour" else "%Y-%m-%d 00:00:00"
    return f"strftime('{fmt}', {compiler.process(element.clauses, **kw)})"


@compiles(_TimeBucket, "postgresql")
def _time_bucket_postgresql(element: _TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    # The unit is a literal from BUCKETS, so SELECT and GROUP BY render identically.
    return f"date_trunc('{element.unit}', {compiler.process(element.clauses, **kw)})"


class MessageLog:
    """Queries and writes of the message log. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes --------------------------------------------------------------------

    def record(self, entry: MessageLogEntry) -> None:
        self.record_many([entry])

    def record_many(self, entries: Iterable[MessageLogEntry]) -> int:
        """Write entries in one transaction. An id that is already logged is replaced,
        so retrying a batch is harmless. Returns the number of distinct entries."""
        by_id = {entry.id: entry for entry in entries}
        if not by_id:
            return 0
        ids = list(by_id)
        with self._db.write() as conn:
            for start in range(0, len(ids), _CHUNK):
                self._delete_ids(conn, ids[start : start + _CHUNK])
            conn.execute(message_log.insert(), [_row(e) for e in by_id.values()])
            recipients = [
                {"message_id": e.id, "position": i, "address": _clean(address)}
                for e in by_id.values()
                for i, address in enumerate(e.recipients)
            ]
            if recipients:
                conn.execute(message_recipients.insert(), recipients)
            symbols = [
                {
                    "message_id": e.id,
                    "position": i,
                    "name": _clean(name),
                    "score": score,
                    "reason": _clean(reason),
                }
                for e in by_id.values()
                for i, (name, score, reason) in enumerate(e.symbols)
            ]
            if symbols:
                conn.execute(message_symbols.insert(), symbols)
        return len(by_id)

    @staticmethod
    def _delete_ids(conn: Connection, ids: Sequence[str]) -> int:
        conn.execute(delete(message_recipients).where(message_recipients.c.message_id.in_(ids)))
        conn.execute(delete(message_symbols).where(message_symbols.c.message_id.in_(ids)))
        return int(conn.execute(delete(message_log).where(message_log.c.id.in_(ids))).rowcount)

    def purge_older_than(self, days: float) -> int:
        """Delete entries older than `days` days, in short transactions."""
        if days < 0:
            raise ValueError("days must not be negative")
        cutoff = utcnow() - timedelta(days=days)
        total = 0
        while True:
            with self._db.write() as conn:
                ids = list(
                    conn.execute(
                        select(message_log.c.id)
                        .where(message_log.c.time < cutoff)
                        .limit(_PURGE_CHUNK)
                    ).scalars()
                )
                if not ids:
                    return total
                for start in range(0, len(ids), _CHUNK):
                    total += self._delete_ids(conn, ids[start : start + _CHUNK])

    # -- reads ---------------------------------------------------------------------

    def get(self, id: str) -> MessageLogEntry | None:
        with self._db.read() as conn:
            rows = conn.execute(select(message_log).where(message_log.c.id == id)).all()
            found = self._load(conn, rows)
        return found[0] if found else None

    def search(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        client_ip: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[MessageLogEntry]:
        """Entries newest first. sender/recipient/subject: case-insensitive substring;
        client_ip and action: exact; since inclusive, until exclusive."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        filters = self._filters(sender, recipient, subject, client_ip, action, since, until)
        query = (
            select(message_log)
            .where(*filters)
            .order_by(message_log.c.time.desc(), message_log.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._db.read() as conn:
            return self._load(conn, conn.execute(query).all())

    def count(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        client_ip: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many entries `search` with the same filters would page through."""
        filters = self._filters(sender, recipient, subject, client_ip, action, since, until)
        query = select(func.count()).select_from(message_log).where(*filters)
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def counts_by_action(
        self, since: datetime, bucket: str = "hour", *, until: datetime | None = None
    ) -> dict[datetime, dict[str, int]]:
        """{bucket start (UTC): {action: count}} for entries in [since, until), oldest
        bucket first; buckets without mail are absent."""
        bucket_start = _TimeBucket(bucket, message_log.c.time).label("bucket")
        filters = self._filters(None, None, None, None, None, since, until)
        query = (
            select(bucket_start, message_log.c.action, func.count().label("n"))
            .where(*filters)
            .group_by(bucket_start, message_log.c.action)
            .order_by(bucket_start)
        )
        result: dict[datetime, dict[str, int]] = {}
        with self._db.read() as conn:
            for start, action, n in conn.execute(query):
                result.setdefault(start, {})[action] = int(n)
        return result

    def top_symbols(
        self,
        since: datetime,
        *,
        actions: Sequence[str] | None = None,
        limit: int = 10,
        until: datetime | None = None,
    ) -> list[tuple[str, int, float]]:
        """The symbols with a positive score seen most often in [since, until), as
        (name, messages, total score), most frequent first; `actions` limits it to
        messages that ended so (e.g. the blocking ones)."""
        m, s = message_log, message_symbols
        filters = self._filters(None, None, None, None, None, since, until)
        if actions:
            filters.append(m.c.action.in_([_action_text(a) for a in actions]))
        messages = func.count(func.distinct(s.c.message_id)).label("messages")
        query = (
            select(s.c.name, messages, func.sum(s.c.score))
            .join(m, m.c.id == s.c.message_id)
            .where(s.c.score > 0, *filters)
            .group_by(s.c.name)
            .order_by(messages.desc(), s.c.name)
            .limit(limit)
        )
        with self._db.read() as conn:
            return [(name, int(n), float(total)) for name, n, total in conn.execute(query)]

    def top_values(
        self,
        column: str,
        since: datetime,
        *,
        actions: Sequence[str] | None = None,
        limit: int = 10,
        until: datetime | None = None,
    ) -> list[tuple[str, int]]:
        """The most frequent values of `column` ("sender" or "client_ip") among messages
        in [since, until) that ended with one of `actions`, as (value, messages)."""
        if column not in ("sender", "client_ip"):
            raise ValueError(f"top_values of {column!r} is not supported")
        m = message_log
        value = m.c[column]
        filters = self._filters(None, None, None, None, None, since, until)
        if actions:
            filters.append(m.c.action.in_([_action_text(a) for a in actions]))
        n = func.count().label("n")
        query = (select(value, n).where(*filters).group_by(value)
                 .order_by(n.desc(), value).limit(limit))
        with self._db.read() as conn:
            return [(str(v), int(count)) for v, count in conn.execute(query)]

    @staticmethod
    def _filters(
        sender: str | None,
        recipient: str | None,
        subject: str | None,
        client_ip: str | None,
        action: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> list[ColumnElement[bool]]:
        m = message_log
        filters: list[ColumnElement[bool]] = []
        if sender:
            filters.append(m.c.sender.icontains(sender, autoescape=True))
        if subject:
            filters.append(m.c.subject.icontains(subject, autoescape=True))
        if recipient:
            r = message_recipients
            filters.append(
                exists().where(
                    r.c.message_id == m.c.id, r.c.address.icontains(recipient, autoescape=True)
                )
            )
        if client_ip:
            filters.append(m.c.client_ip == client_ip)
        if action:
            filters.append(m.c.action == _action_text(action))
        if since is not None:
            filters.append(m.c.time >= require_aware(since, "since"))
        if until is not None:
            filters.append(m.c.time < require_aware(until, "until"))
        return filters

    @staticmethod
    def _load(conn: Connection, rows: Sequence[Any]) -> list[MessageLogEntry]:
        ids = [row.id for row in rows]
        recipients: dict[str, list[str]] = {i: [] for i in ids}
        symbols: dict[str, list[SymbolTuple]] = {i: [] for i in ids}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            r = message_recipients
            for message_id, address in conn.execute(
                select(r.c.message_id, r.c.address)
                .where(r.c.message_id.in_(chunk))
                .order_by(r.c.message_id, r.c.position)
            ):
                recipients[message_id].append(address)
            s = message_symbols
            for message_id, name, score, reason in conn.execute(
                select(s.c.message_id, s.c.name, s.c.score, s.c.reason)
                .where(s.c.message_id.in_(chunk))
                .order_by(s.c.message_id, s.c.position)
            ):
                symbols[message_id].append((name, score, reason))
        return [
            MessageLogEntry(
                id=row.id,
                time=row.time,
                listener=row.listener,
                client_ip=row.client_ip,
                helo=row.helo,
                sender=row.sender,
                recipients=recipients[row.id],
                subject=row.subject,
                size=row.size,
                symbols=symbols[row.id],
                total=row.total,
                action=row.action,
                reply=row.reply,
                downstream_reply=row.downstream_reply,
                duration_ms=row.duration_ms,
                quarantine_path=row.quarantine_path,
            )
            for row in rows
        ]


def _row(entry: MessageLogEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "time": entry.time,
        "listener": entry.listener,
        "client_ip": entry.client_ip,
        "helo": _clean(entry.helo),
        "sender": _clean(entry.sender),
        "subject": _clean(entry.subject),
        "size": entry.size,
        "total": entry.total,
        "action": entry.action,
        "reply": _clean(entry.reply),
        "downstream_reply": _clean_optional(entry.downstream_reply),
        "duration_ms": entry.duration_ms,
        "quarantine_path": _clean_optional(entry.quarantine_path),
    }


class MessageLogWriter(BackgroundWriter[MessageLogEntry]):
    """Batches log entries off the proxy's hot path: `submit` never touches the
    database; see `BackgroundWriter` for flush/close/backoff/drop semantics."""

    def __init__(
        self,
        log: MessageLog,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> None:
        super().__init__(
            log.record_many,
            name="messagelog-writer",
            describe=_describe,
            max_queue=max_queue,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_backoff=max_backoff,
        )


def _describe(entry: MessageLogEntry) -> str:
    return f"message log entry {entry.id}"


__all__ = [
    "ACTIONS",
    "BUCKETS",
    "LISTENERS",
    "MessageLog",
    "MessageLogEntry",
    "MessageLogWriter",
]
