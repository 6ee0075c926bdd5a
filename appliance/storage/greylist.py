"""Greylisting state: triplets (client network, sender, recipient) and client networks.

A triplet is *pending* (currently delayed) from its first attempt until it is retried
after the delay, then *passed* and kept while it is used. A client network that has
retried enough different triplets is a real mail server and is no longer greylisted
(postgrey's auto-whitelist-clients).

Workers decide in memory and send `GreylistEvent`s here in batches (off the event loop);
`record_many` applies them in one write transaction, so two workers seeing the same
triplet never lose each other's updates: the earliest first attempt wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select
from sqlalchemy import update as sql_update

from appliance.storage.engine import Database
from appliance.storage.schema import counters, greylist, greylist_clients
from appliance.storage.types import require_aware, utcnow

COUNTER_NAME = "greylist"
MAX_ADDRESS = 512
MAX_NET = 64


class EventKind(StrEnum):
    ATTEMPT = "attempt"  # a delivery attempt was delayed (first or too early)
    RESTART = "restart"  # the pending triplet had expired: its delay starts again
    PASS = "pass"  # noqa: S105 - retried after the delay (or known): the triplet passes
    SEEN = "seen"  # a passed triplet was used again: keep it longer
    CLIENT_SEEN = "client_seen"  # a whitelisted client network was used again


@dataclass(frozen=True, slots=True)
class GreylistEvent:
    kind: EventKind
    client_net: str
    sender: str
    recipient: str
    at: datetime
    first_seen: datetime | None = None  # what the worker believed (ATTEMPT, PASS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))
        object.__setattr__(self, "at", require_aware(self.at, "at"))
        if self.first_seen is not None:
            object.__setattr__(self, "first_seen", require_aware(self.first_seen, "first_seen"))
        if not self.client_net or len(self.client_net) > MAX_NET:
            raise ValueError(f"client network must be 1..{MAX_NET} characters")
        if len(self.sender) > MAX_ADDRESS or len(self.recipient) > MAX_ADDRESS:
            raise ValueError(f"greylist addresses are at most {MAX_ADDRESS} characters")

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.client_net, self.sender, self.recipient)


@dataclass(frozen=True, slots=True)
class GreylistEntry:
    client_net: str
    sender: str
    recipient: str
    first_seen: datetime
    last_seen: datetime
    passed_at: datetime | None
    attempts: int

    @property
    def passed(self) -> bool:
        return self.passed_at is not None


@dataclass(frozen=True, slots=True)
class GreylistClient:
    client_net: str
    passes: int
    first_seen: datetime
    last_seen: datetime


class GreylistStore:
    """Greylist triplets and client networks. Thread-safe; short transactions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes --------------------------------------------------------------------

    def record_many(self, events: Sequence[GreylistEvent]) -> None:
        """Apply workers' events in time order, in one transaction."""
        if not events:
            return
        ordered = sorted(events, key=lambda e: e.at)
        with self._db.write() as conn:
            rows = self._load_triplets(
                conn, {e.key for e in ordered if e.kind is not EventKind.CLIENT_SEEN}
            )
            clients = self._load_clients(conn, {e.client_net for e in ordered})
            known_rows, known_clients = set(rows), set(clients)
            for event in ordered:
                _apply(event, rows, clients)
            self._write(conn, greylist, rows, known_rows, _triplet_where)
            self._write(conn, greylist_clients, clients, known_clients, _client_where)

    @staticmethod
    def _load_triplets(
        conn: Connection, keys: set[tuple[str, str, str]]
    ) -> dict[Any, dict[str, Any]]:
        t = greylist
        rows: dict[Any, dict[str, Any]] = {}
        for net, sender, rcpt in keys:
            row = conn.execute(
                select(t).where(t.c.client_net == net, t.c.sender == sender,
                                t.c.recipient == rcpt)
            ).first()
            if row is not None:
                rows[(net, sender, rcpt)] = dict(row._mapping)
        return rows

    @staticmethod
    def _load_clients(conn: Connection, nets: set[str]) -> dict[Any, dict[str, Any]]:
        t = greylist_clients
        rows: dict[Any, dict[str, Any]] = {}
        net_list = sorted(nets)
        for start in range(0, len(net_list), 500):
            chunk = net_list[start : start + 500]
            for row in conn.execute(select(t).where(t.c.client_net.in_(chunk))):
                rows[row.client_net] = dict(row._mapping)
        return rows

    @staticmethod
    def _write(
        conn: Connection, table: Any, rows: dict[Any, dict[str, Any]], known: set[Any],
        where: Any,
    ) -> None:
        new = [row for key, row in rows.items() if key not in known]
        if new:
            conn.execute(table.insert(), new)
        for key, row in rows.items():
            if key in known:
                conn.execute(sql_update(table).where(where(key)).values(**row))

    def clear(self, client_net: str | None = None) -> int:
        """Forget every triplet and client network (or those of one network); the
        running workers notice through the change counter. Returns the triplets removed."""
        with self._db.write() as conn:
            triplets = delete(greylist)
            clients = delete(greylist_clients)
            if client_net is not None:
                triplets = triplets.where(greylist.c.client_net == client_net)
                clients = clients.where(greylist_clients.c.client_net == client_net)
            removed = int(conn.execute(triplets).rowcount)
            conn.execute(clients)
            _bump(conn)
        return removed

    def purge(
        self, *, retry_window: float, keep_for: float, now: datetime | None = None
    ) -> int:
        """Delete pending triplets whose retry window has passed, and passed triplets and
        client networks unused for `keep_for` seconds. Returns the triplets removed."""
        now = require_aware(now, "now") if now is not None else utcnow()
        pending_cutoff = now - timedelta(seconds=retry_window)
        unused_cutoff = now - timedelta(seconds=keep_for)
        t, c = greylist, greylist_clients
        with self._db.write() as conn:
            removed = conn.execute(
                delete(t).where(
                    or_(
                        and_(t.c.passed_at.is_(None), t.c.first_seen < pending_cutoff),
                        t.c.last_seen < unused_cutoff,
                    )
                )
            ).rowcount
            conn.execute(delete(c).where(c.c.last_seen < unused_cutoff))
        return int(removed)

    # -- reads ---------------------------------------------------------------------

    def lookup(self, client_net: str, sender: str, recipient: str) -> GreylistEntry | None:
        t = greylist
        with self._db.read() as conn:
            row = conn.execute(
                select(t).where(t.c.client_net == client_net, t.c.sender == sender,
                                t.c.recipient == recipient)
            ).first()
        return _entry(row._mapping) if row is not None else None

    def delayed(
        self, limit: int = 100, offset: int = 0, *, since: datetime | None = None
    ) -> list[GreylistEntry]:
        """Triplets currently delayed (not yet retried after the delay), newest first;
        `since` leaves out those first seen before it (e.g. beyond the retry window)."""
        return self._entries(False, limit, offset, since)

    def passed(self, limit: int = 100, offset: int = 0) -> list[GreylistEntry]:
        """Triplets that passed, most recently used first."""
        return self._entries(True, limit, offset, None)

    def _entries(
        self, passed: bool, limit: int, offset: int, since: datetime | None
    ) -> list[GreylistEntry]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        t = greylist
        if passed:
            query = select(t).where(t.c.passed_at.is_not(None)).order_by(t.c.last_seen.desc())
        else:
            query = select(t).where(t.c.passed_at.is_(None)).order_by(t.c.first_seen.desc())
            if since is not None:
                query = query.where(t.c.first_seen >= require_aware(since, "since"))
        query = query.order_by(t.c.client_net, t.c.sender, t.c.recipient)
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query.limit(limit).offset(offset))]

    def counts(self) -> dict[str, int]:
        """Delayed and passed triplets, and client networks, for status pages."""
        t = greylist
        with self._db.read() as conn:
            delayed = conn.execute(
                select(func.count()).select_from(t).where(t.c.passed_at.is_(None))
            ).scalar_one()
            passed = conn.execute(
                select(func.count()).select_from(t).where(t.c.passed_at.is_not(None))
            ).scalar_one()
            clients = conn.execute(select(func.count()).select_from(greylist_clients)).scalar_one()
        return {"delayed": int(delayed), "passed": int(passed), "clients": int(clients)}

    def clients(self, *, since: datetime | None = None) -> list[GreylistClient]:
        """Client networks (those used at or after `since`): a worker's refresh."""
        c = greylist_clients
        query = select(c)
        if since is not None:
            query = query.where(c.c.last_seen >= require_aware(since, "since"))
        with self._db.read() as conn:
            return [
                GreylistClient(row.client_net, int(row.passes), row.first_seen, row.last_seen)
                for row in conn.execute(query)
            ]

    def change_counter(self) -> int:
        """Increases when the greylist is cleared: workers then drop what they cached."""
        with self._db.read() as conn:
            value = conn.execute(
                select(counters.c.value).where(counters.c.name == COUNTER_NAME)
            ).scalar_one_or_none()
        return int(value or 0)


def _apply(
    event: GreylistEvent, rows: dict[Any, dict[str, Any]], clients: dict[Any, dict[str, Any]]
) -> None:
    at = event.at
    if event.kind is EventKind.CLIENT_SEEN:
        client = clients.get(event.client_net)
        if client is not None:
            client["last_seen"] = max(client["last_seen"], at)
        return
    row = rows.get(event.key)
    kind = event.kind
    if kind is EventKind.SEEN:
        if row is not None:  # a cleared triplet stays cleared
            row["last_seen"] = max(row["last_seen"], at)
        return
    if row is None or kind is EventKind.RESTART:
        first = at if kind is EventKind.RESTART else (event.first_seen or at)
        rows[event.key] = {
            "client_net": event.client_net,
            "sender": event.sender,
            "recipient": event.recipient,
            "first_seen": min(first, at),
            "last_seen": at,
            "passed_at": at if kind is EventKind.PASS else None,
            "attempts": 1,
        }
        if kind is EventKind.PASS:
            _count_pass(event, clients)
        return
    row["attempts"] += 1
    row["last_seen"] = max(row["last_seen"], at)
    if row["passed_at"] is not None:
        return
    if event.first_seen is not None:
        row["first_seen"] = min(row["first_seen"], event.first_seen)
    if kind is EventKind.PASS:
        row["passed_at"] = at
        _count_pass(event, clients)


def _count_pass(event: GreylistEvent, clients: dict[Any, dict[str, Any]]) -> None:
    client = clients.get(event.client_net)
    if client is None:
        clients[event.client_net] = {
            "client_net": event.client_net,
            "passes": 1,
            "first_seen": event.at,
            "last_seen": event.at,
        }
    else:
        client["passes"] += 1
        client["last_seen"] = max(client["last_seen"], event.at)


def _triplet_where(key: tuple[str, str, str]) -> Any:
    t = greylist
    return and_(t.c.client_net == key[0], t.c.sender == key[1], t.c.recipient == key[2])


def _client_where(key: str) -> Any:
    return greylist_clients.c.client_net == key


def _bump(conn: Connection) -> None:
    conn.execute(
        sql_update(counters)
        .where(counters.c.name == COUNTER_NAME)
        .values(value=counters.c.value + 1)
    )


def _entry(row: Any) -> GreylistEntry:
    return GreylistEntry(
        client_net=row["client_net"],
        sender=row["sender"],
        recipient=row["recipient"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        passed_at=row["passed_at"],
        attempts=int(row["attempts"]),
    )
