"""Personal blacklists: senders one local user does not want mail from.

Values are normalised like the global address lists (addresses, @domain, wildcards; no
/regex/ from users). Every change bumps the `personal_blacklist` counter the proxies poll.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select, update

from appliance.storage.engine import Database
from appliance.storage.lists import _insert_for, normalise_value
from appliance.storage.schema import counters
from appliance.storage.schema_learning import personal_blacklist
from appliance.storage.types import utcnow

COUNTER_NAME = "personal_blacklist"
MAX_ENTRIES_PER_OWNER = 1000


def normalise_owner(owner: str) -> str:
    value = owner.strip().strip("<>").lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or len(value) > 320 or any(c.isspace() for c in value):
        raise ValueError(f"{owner!r} is not a mail address")
    return value


def normalise_entry(value: str) -> str:
    text = value.strip()
    if text.startswith("/"):
        raise ValueError(f"{value!r}: regular expressions are not allowed in personal lists")
    return normalise_value("blacklist", text)


class PersonalBlacklistStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, owner: str, values: list[str], *, added_by: str = "") -> list[str]:
        """Add values (validated first, all or nothing); returns the normalised values."""
        owner = normalise_owner(owner)
        normalised = list(dict.fromkeys(normalise_entry(v) for v in values))
        if not normalised:
            return []
        t = personal_blacklist
        with self._db.write() as conn:
            have = set(conn.execute(select(t.c.value).where(t.c.owner == owner)).scalars())
            if len(have | set(normalised)) > MAX_ENTRIES_PER_OWNER:
                raise ValueError(f"a personal blacklist holds at most {MAX_ENTRIES_PER_OWNER} "
                                 "entries")
            stmt = _insert_for(conn.dialect.name)(t).on_conflict_do_nothing(
                index_elements=[t.c.owner, t.c.value]
            )
            now = utcnow()
            conn.execute(stmt, [{"owner": owner, "value": v, "added_by": added_by,
                                 "created_at": now} for v in normalised])
            self._bump(conn)
        return normalised

    def remove(self, owner: str, values: list[str]) -> list[str]:
        """Remove values; returns those that were there."""
        owner = normalise_owner(owner)
        normalised = list(dict.fromkeys(normalise_entry(v) for v in values))
        t = personal_blacklist
        removed = []
        with self._db.write() as conn:
            for value in normalised:
                if conn.execute(delete(t).where(t.c.owner == owner, t.c.value == value)).rowcount:
                    removed.append(value)
            if removed:
                self._bump(conn)
        return removed

    def entries(self, owner: str) -> list[str]:
        owner = normalise_owner(owner)
        t = personal_blacklist
        with self._db.read() as conn:
            return list(
                conn.execute(select(t.c.value).where(t.c.owner == owner).order_by(t.c.value))
                .scalars()
            )

    def all_entries(self) -> dict[str, list[str]]:
        """owner -> values, for the proxies' in-memory index."""
        t = personal_blacklist
        result: dict[str, list[str]] = {}
        with self._db.read() as conn:
            for owner, value in conn.execute(
                select(t.c.owner, t.c.value).order_by(t.c.owner, t.c.value)
            ):
                result.setdefault(owner, []).append(value)
        return result

    def change_counter(self) -> int:
        with self._db.read() as conn:
            value = conn.execute(
                select(counters.c.value).where(counters.c.name == COUNTER_NAME)
            ).scalar_one_or_none()
        return int(value or 0)

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(
            update(counters)
            .where(counters.c.name == COUNTER_NAME)
            .values(value=counters.c.value + 1)
        )
