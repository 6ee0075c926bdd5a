"""Named lists with expiry: white/black/red lists, IP allow/deny, the autowhitelist.

Values are normalised here, once, so the proxy's in-memory matcher, the web UI and the
mail command interface all agree on what an entry is: addresses, ``@domain``, wildcards
(``*``, ``?``) and domains are lower-cased; ``/regex/`` is kept verbatim (lower-casing
would change ``\\S`` into ``\\s``); ``ip_*`` values are CIDR networks as the config
schema writes them (``10.0.0.1/32``).

Every add and remove bumps a counter (`change_counter`) that the proxy polls to know
when to reload its index; `next_expiry` tells it when an entry will lapse on its own.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, delete, func, null, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite

from appliance.storage.engine import Database
from appliance.storage.schema import counters, list_entries
from appliance.storage.types import require_aware, utcnow

LIST_NAMES: tuple[str, ...] = (
    "whitelist",
    "blacklist",
    "redlist",
    "noprocessing",
    "spamlovers",
    "ip_allow",
    "ip_deny",
    "autowhitelist",
    "valid_recipients",
)
IP_LISTS = frozenset({"ip_allow", "ip_deny"})
SOURCES: tuple[str, ...] = ("config", "ui", "mail", "auto")
COUNTER_NAME = "lists"

MAX_VALUE_LENGTH = 1000
MAX_ADDRESS_LENGTH = 320
_FORBIDDEN = frozenset(' \t<>()[],;:"\\/')
_MATCHES_EVERYTHING = frozenset("*?.@")


@dataclass(frozen=True, slots=True)
class ListEntry:
    list_name: str
    value: str
    comment: str
    added_by: str
    source: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


def validate_list_name(name: str) -> str:
    if name not in LIST_NAMES:
        raise ValueError(f"unknown list {name!r}; known lists: {', '.join(LIST_NAMES)}")
    return name


def validate_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return source


def normalise_value(list_name: str, value: str) -> str:
    """The canonical form of `value` for `list_name`; ValueError says what is wrong."""
    validate_list_name(list_name)
    if not isinstance(value, str):
        raise TypeError(f"list value must be a string, not {type(value).__name__}")
    if list_name in IP_LISTS:
        return _normalise_network(value)
    return _normalise_address(value)


def _normalise_network(value: str) -> str:
    text = value.strip()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


def _normalise_address(value: str) -> str:
    text = value.strip()
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1].strip()
    if not text:
        raise ValueError("empty list value")
    if len(text) > MAX_VALUE_LENGTH:
        raise ValueError(f"list value longer than {MAX_VALUE_LENGTH} characters")
    if len(text) >= 3 and text[0] == "/" and text[-1] == "/":
        try:
            re.compile(text[1:-1])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
        return text
    text = text.lower()
    if len(text) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"address longer than {MAX_ADDRESS_LENGTH} characters: {value!r}")
    for char in text:
        if char in _FORBIDDEN or not char.isprintable():
            raise ValueError(
                f"{value!r} is not an address, @domain, wildcard or /regex/: it contains {char!r}"
            )
    local, at, domain = text.rpartition("@")
    if "@" in local:
        raise ValueError(f"{value!r} contains more than one '@'")
    domain = domain.rstrip(".")
    if not domain:
        raise ValueError(f"{value!r} has no domain after '@'")
    if domain.startswith(".") or ".." in domain:
        raise ValueError(f"{value!r} has an empty label in its domain")
    normalised = f"{local}{at}{domain}"
    if set(normalised) <= _MATCHES_EVERYTHING:
        raise ValueError(f"{value!r} would match every address; refusing it")
    return normalised


def _insert_for(dialect: str) -> Any:
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise NotImplementedError(f"list upsert is not implemented for {dialect}")


class ListStore:
    """The lists in the database. Thread-safe; every method is one short transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes --------------------------------------------------------------------

    def add(
        self,
        list_name: str,
        value: str,
        *,
        expires_at: datetime | None = None,
        comment: str = "",
        added_by: str = "",
        source: str = "ui",
    ) -> ListEntry:
        """Add or refresh an entry and return it as stored.

        Re-adding never shortens a life: the new expiry is the later of the two, and no
        expiry (permanent) wins. A non-empty comment/added_by replaces the old one."""
        validate_list_name(list_name)
        normalised = normalise_value(list_name, value)
        self._upsert(list_name, [normalised], expires_at, comment, added_by, source)
        entry = self.get(list_name, normalised)
        assert entry is not None
        return entry

    def add_many(
        self,
        list_name: str,
        values: Iterable[str],
        *,
        expires_at: datetime | None = None,
        comment: str = "",
        added_by: str = "",
        source: str = "auto",
    ) -> int:
        """Upsert several values in one transaction (e.g. all recipients of an outgoing
        message into the autowhitelist). All values are validated before anything is
        written. Returns the number of distinct values written."""
        validate_list_name(list_name)
        normalised = list(dict.fromkeys(normalise_value(list_name, v) for v in values))
        if normalised:
            self._upsert(list_name, normalised, expires_at, comment, added_by, source)
        return len(normalised)

    def _upsert(
        self,
        list_name: str,
        values: list[str],
        expires_at: datetime | None,
        comment: str,
        added_by: str,
        source: str,
    ) -> None:
        validate_source(source)
        if expires_at is not None:
            expires_at = require_aware(expires_at, "expires_at")
        now = utcnow()
        rows = [
            {
                "list_name": list_name,
                "value": value,
                "comment": comment,
                "added_by": added_by,
                "source": source,
                "created_at": now,
                "updated_at": now,
                "expires_at": expires_at,
            }
            for value in values
        ]
        t = list_entries
        with self._db.write() as conn:
            stmt = _insert_for(conn.dialect.name)(t)
            new = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.list_name, t.c.value],
                set_={
                    "expires_at": case(
                        (or_(t.c.expires_at.is_(None), new.expires_at.is_(None)), null()),
                        (new.expires_at > t.c.expires_at, new.expires_at),
                        else_=t.c.expires_at,
                    ),
                    "comment": case((new.comment != "", new.comment), else_=t.c.comment),
                    "added_by": case((new.added_by != "", new.added_by), else_=t.c.added_by),
                    "source": new.source,
                    "updated_at": new.updated_at,
                },
            )
            conn.execute(stmt, rows)
            self._bump(conn)

    def remove(self, list_name: str, value: str) -> bool:
        """Delete an entry; False if it was not there."""
        normalised = normalise_value(list_name, value)
        t = list_entries
        with self._db.write() as conn:
            result = conn.execute(
                delete(t).where(t.c.list_name == list_name, t.c.value == normalised)
            )
            if result.rowcount:
                self._bump(conn)
        return bool(result.rowcount)

    def purge_expired(self) -> int:
        """Delete expired entries of every list; returns how many went."""
        t = list_entries
        with self._db.write() as conn:
            result = conn.execute(
                delete(t).where(t.c.expires_at.is_not(None), t.c.expires_at <= utcnow())
            )
            if result.rowcount:
                self._bump(conn)
        return int(result.rowcount)

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(
            sql_update(counters)
            .where(counters.c.name == COUNTER_NAME)
            .values(value=counters.c.value + 1)
        )

    # -- reads ---------------------------------------------------------------------

    def change_counter(self) -> int:
        """Increases with every add/remove/purge; poll it to know when to reload."""
        with self._db.read() as conn:
            value = conn.execute(
                select(counters.c.value).where(counters.c.name == COUNTER_NAME)
            ).scalar_one_or_none()
        return int(value or 0)

    def get(self, list_name: str, value: str) -> ListEntry | None:
        normalised = normalise_value(list_name, value)
        t = list_entries
        with self._db.read() as conn:
            row = conn.execute(
                select(t).where(t.c.list_name == list_name, t.c.value == normalised)
            ).first()
        return _entry(row._mapping) if row is not None else None

    def entries(
        self,
        list_name: str,
        *,
        include_expired: bool = False,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ListEntry]:
        """Entries of one list ordered by value; `search` is a case-insensitive substring
        of the value or the comment."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        t = list_entries
        query = (
            select(t)
            .where(*self._filters(list_name, include_expired, search))
            .order_by(t.c.value)
            .limit(limit)
            .offset(offset)
        )
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def count(
        self, list_name: str, *, include_expired: bool = False, search: str | None = None
    ) -> int:
        query = select(func.count()).select_from(list_entries)
        query = query.where(*self._filters(list_name, include_expired, search))
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _filters(
        list_name: str, include_expired: bool, search: str | None
    ) -> list[ColumnElement[bool]]:
        validate_list_name(list_name)
        t = list_entries
        filters: list[ColumnElement[bool]] = [t.c.list_name == list_name]
        if not include_expired:
            filters.append(or_(t.c.expires_at.is_(None), t.c.expires_at > utcnow()))
        if search:
            filters.append(
                or_(
                    t.c.value.icontains(search, autoescape=True),
                    t.c.comment.icontains(search, autoescape=True),
                )
            )
        return filters

    def active_values(self) -> dict[str, list[str]]:
        """Every list (all names present) with its non-expired values, sorted."""
        t = list_entries
        result: dict[str, list[str]] = {name: [] for name in LIST_NAMES}
        query = (
            select(t.c.list_name, t.c.value)
            .where(or_(t.c.expires_at.is_(None), t.c.expires_at > utcnow()))
            .order_by(t.c.list_name, t.c.value)
        )
        with self._db.read() as conn:
            for list_name, value in conn.execute(query):
                if list_name in result:
                    result[list_name].append(value)
        return result

    def next_expiry(self) -> datetime | None:
        """When the next currently active entry lapses (reload the index then), or None."""
        t = list_entries
        query = select(func.min(t.c.expires_at)).where(
            and_(t.c.expires_at.is_not(None), t.c.expires_at > utcnow())
        )
        with self._db.read() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return value


def _entry(row: Any) -> ListEntry:
    return ListEntry(
        list_name=row["list_name"],
        value=row["value"],
        comment=row["comment"],
        added_by=row["added_by"],
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )
