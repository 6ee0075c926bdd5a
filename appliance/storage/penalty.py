"""The penalty box: a score per client (IPv4 address or IPv6 /64) that grows with bad
events and halves every `half_life` seconds.

A row holds the score as it was at `updated_at`; readers decay it to "now" themselves
(`PenaltyEntry.current`), so nothing has to rewrite rows as time passes. Adding points
is a read-modify-write of the decayed value inside one write transaction, so workers
adding to the same client at once never lose each other's points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select
from sqlalchemy import update as sql_update

from appliance.netblock import parse_client
from appliance.storage.engine import Database
from appliance.storage.schema import counters, penalty_box
from appliance.storage.types import require_aware, utcnow

COUNTER_NAME = "penalty"
MAX_REASON = 200
_CHUNK = 500


def decayed(score: float, age_seconds: float, half_life: float) -> float:
    """`score` after `age_seconds` of exponential decay with the given half-life.

    A negative age (a clock step back, another host's clock) never makes a score grow."""
    if half_life <= 0:
        raise ValueError("half_life must be positive")
    if age_seconds <= 0 or score == 0:
        return score
    return score * math.exp2(-age_seconds / half_life)


def age_for(score: float, target: float, half_life: float) -> float:
    """Seconds until `score` has decayed to `target` (0 when it is already there)."""
    if score <= target or target <= 0:
        return 0.0 if score <= target else math.inf
    return half_life * math.log2(score / target)


@dataclass(frozen=True, slots=True)
class PenaltyEvent:
    """Points for one client, with a short reason (`rejected recipient`, `DNSBL_ZEN`)."""

    client: str
    points: float
    reason: str
    at: datetime

    def __post_init__(self) -> None:
        if not math.isfinite(self.points) or self.points < 0:
            raise ValueError(f"penalty points must be a non-negative number, not {self.points}")
        object.__setattr__(self, "at", require_aware(self.at, "at"))


@dataclass(frozen=True, slots=True)
class PenaltyEntry:
    client: str
    score: float  # at updated_at
    updated_at: datetime
    first_seen: datetime
    events: int
    last_reason: str

    def current(self, half_life: float, now: datetime | None = None) -> float:
        """The score decayed to `now`."""
        age = ((now or utcnow()) - self.updated_at).total_seconds()
        return decayed(self.score, age, half_life)


class PenaltyStore:
    """Penalty scores in the database. Thread-safe; each method is one short transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes --------------------------------------------------------------------

    def add_many(
        self, events: Sequence[PenaltyEvent], *, half_life: float, now: datetime | None = None
    ) -> None:
        """Add every event's points to its client's score, in one transaction.

        Scores are brought to the time of the write (`now`), which becomes `updated_at`:
        a worker refreshing "rows updated since my last look" then never misses a write
        that was queued for a while before it reached the database."""
        if not events:
            return
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        now = require_aware(now, "now") if now is not None else utcnow()
        t = penalty_box
        by_client: dict[str, list[PenaltyEvent]] = {}
        for event in events:
            by_client.setdefault(event.client, []).append(event)
        with self._db.write() as conn:
            rows: dict[str, Any] = {}
            for chunk in _chunks(sorted(by_client)):
                for row in conn.execute(select(t).where(t.c.client.in_(chunk))):
                    rows[row.client] = row
            new: list[dict[str, Any]] = []
            changed: list[dict[str, Any]] = []
            for client, client_events in by_client.items():
                client_events.sort(key=lambda e: e.at)
                added = sum(
                    decayed(e.points, (now - e.at).total_seconds(), half_life)
                    for e in client_events
                )
                reason = client_events[-1].reason[:MAX_REASON]
                row = rows.get(client)
                if row is None:
                    new.append({
                        "client": client,
                        "score": added,
                        "updated_at": now,
                        "first_seen": min(client_events[0].at, now),
                        "events": len(client_events),
                        "last_reason": reason,
                    })
                    continue
                age = (now - row.updated_at).total_seconds()
                changed.append({
                    "key": client,
                    "new_score": decayed(row.score, age, half_life) + added,
                    "new_updated_at": max(now, row.updated_at),
                    "new_events": row.events + len(client_events),
                    "new_reason": reason,
                })
            if new:
                conn.execute(t.insert(), new)
            if changed:
                conn.execute(
                    sql_update(t)
                    .where(t.c.client == bindparam("key"))
                    .values(
                        score=bindparam("new_score"),
                        updated_at=bindparam("new_updated_at", type_=t.c.updated_at.type),
                        events=bindparam("new_events"),
                        last_reason=bindparam("new_reason"),
                    ),
                    changed,
                )

    def clear(self, client: str) -> bool:
        """Forget one client (an address, or an IPv6 /64); False if it had no score."""
        key = parse_client(client)
        with self._db.write() as conn:
            result = conn.execute(delete(penalty_box).where(penalty_box.c.client == key))
            if result.rowcount:
                _bump(conn)
        return bool(result.rowcount)

    def clear_all(self) -> int:
        with self._db.write() as conn:
            result = conn.execute(delete(penalty_box))
            _bump(conn)
        return int(result.rowcount)

    def purge(self, *, half_life: float, below: float, now: datetime | None = None) -> int:
        """Delete clients whose decayed score is below `below` (nothing left to remember).

        Only rows at least one half-life old can qualify, which the index narrows down."""
        now = require_aware(now, "now") if now is not None else utcnow()
        t = penalty_box
        cutoff = now - timedelta(seconds=half_life)
        doomed: list[str] = []
        with self._db.read() as conn:
            for row in conn.execute(
                select(t.c.client, t.c.score, t.c.updated_at).where(t.c.updated_at <= cutoff)
            ):
                age = (now - row.updated_at).total_seconds()
                if decayed(row.score, age, half_life) < below:
                    doomed.append(row.client)
        removed = 0
        for chunk in _chunks(doomed):
            with self._db.write() as conn:
                # Re-check the time: a worker may have added points since the read.
                result = conn.execute(
                    delete(t).where(t.c.client.in_(chunk), t.c.updated_at <= cutoff)
                )
                removed += int(result.rowcount)
        return removed

    # -- reads ---------------------------------------------------------------------

    def get(self, client: str) -> PenaltyEntry | None:
        key = parse_client(client)
        with self._db.read() as conn:
            row = conn.execute(select(penalty_box).where(penalty_box.c.client == key)).first()
        return _entry(row._mapping) if row is not None else None

    def entries(self, *, limit: int = 100, offset: int = 0) -> list[PenaltyEntry]:
        """Clients by most recent event first."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        t = penalty_box
        query = select(t).order_by(t.c.updated_at.desc(), t.c.client).limit(limit).offset(offset)
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(penalty_box)).scalar_one())

    def changed_since(self, since: datetime | None) -> list[PenaltyEntry]:
        """Every row updated at or after `since` (all rows for None): a worker's refresh."""
        t = penalty_box
        query = select(t)
        if since is not None:
            query = query.where(t.c.updated_at >= require_aware(since, "since"))
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def change_counter(self) -> int:
        """Increases when clients are cleared: workers then reload everything."""
        with self._db.read() as conn:
            value = conn.execute(
                select(counters.c.value).where(counters.c.name == COUNTER_NAME)
            ).scalar_one_or_none()
        return int(value or 0)


def _bump(conn: Connection) -> None:
    conn.execute(
        sql_update(counters)
        .where(counters.c.name == COUNTER_NAME)
        .values(value=counters.c.value + 1)
    )


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _entry(row: Any) -> PenaltyEntry:
    return PenaltyEntry(
        client=row["client"],
        score=float(row["score"]),
        updated_at=row["updated_at"],
        first_seen=row["first_seen"],
        events=int(row["events"]),
        last_reason=row["last_reason"],
    )
