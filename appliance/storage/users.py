"""Web UI accounts and failed logins.

Only password *hashes* are stored; hashing and verifying happen in the web UI (argon2).
Every change that must end existing sessions (new password, new role, lock, removal)
bumps `session_version`, which each request compares with the one in its cookie.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from appliance.storage.engine import Database
from appliance.storage.schema import login_failures, webui_users
from appliance.storage.types import require_aware, utcnow

ROLES: tuple[str, ...] = ("admin", "operator")
USERNAME_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")


class UserExists(ValueError):
    pass


class UnknownUser(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    role: str
    must_change_password: bool
    failed_logins: int
    locked_until: datetime | None
    session_version: int
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None

    def is_locked(self, now: datetime | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (now or utcnow())


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise ValueError(
            "a user name is 1-64 characters: a lower-case letter, then letters, digits, '.', "
            "'_' or '-'"
        )
    return username


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- accounts ------------------------------------------------------------------

    def create(
        self, username: str, password_hash: str, role: str, *, must_change_password: bool = True
    ) -> User:
        validate_username(username)
        validate_role(role)
        now = utcnow()
        try:
            with self._db.write() as conn:
                conn.execute(
                    insert(webui_users).values(
                        username=username,
                        password_hash=password_hash,
                        role=role,
                        must_change_password=must_change_password,
                        failed_logins=0,
                        session_version=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise UserExists(f"user {username!r} already exists") from None
        user = self.get(username)
        assert user is not None
        return user

    def get(self, username: str) -> User | None:
        with self._db.read() as conn:
            row = conn.execute(
                select(webui_users).where(webui_users.c.username == username)
            ).first()
        return _user(row._mapping) if row is not None else None

    def all(self) -> list[User]:
        with self._db.read() as conn:
            rows = conn.execute(select(webui_users).order_by(webui_users.c.username)).all()
        return [_user(row._mapping) for row in rows]

    def count_admins(self) -> int:
        with self._db.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(webui_users)
                    .where(webui_users.c.role == "admin")
                ).scalar_one()
            )

    def set_password(self, username: str, password_hash: str, *, must_change: bool) -> None:
        self._update(
            username,
            password_hash=password_hash,
            must_change_password=must_change,
            failed_logins=0,
            locked_until=None,
            session_version=webui_users.c.session_version + 1,
        )

    def set_role(self, username: str, role: str) -> None:
        validate_role(role)
        self._update(
            username, role=role, session_version=webui_users.c.session_version + 1
        )

    def unlock(self, username: str) -> None:
        self._update(username, failed_logins=0, locked_until=None)

    def end_sessions(self, username: str) -> None:
        """Every cookie issued so far stops working (log out everywhere)."""
        self._update(username, session_version=webui_users.c.session_version + 1)

    def delete(self, username: str) -> bool:
        with self._db.write() as conn:
            result = conn.execute(delete(webui_users).where(webui_users.c.username == username))
        return bool(result.rowcount)

    def record_success(self, username: str) -> None:
        self._update(username, failed_logins=0, locked_until=None, last_login_at=utcnow())

    def record_failure(
        self, username: str, *, max_failures: int, lockout: timedelta
    ) -> User | None:
        """Count a wrong password; the `max_failures`-th in a row locks the account for
        `lockout` (and ends its sessions). Returns the user as updated, None if unknown."""
        t = webui_users
        with self._db.write() as conn:
            row = conn.execute(select(t).where(t.c.username == username)).first()
            if row is None:
                return None
            failures = int(row.failed_logins) + 1
            values: dict[str, Any] = {"failed_logins": failures, "updated_at": utcnow()}
            if failures >= max_failures:
                values["locked_until"] = utcnow() + lockout
                values["failed_logins"] = 0
                values["session_version"] = t.c.session_version + 1
            conn.execute(update(t).where(t.c.username == username).values(**values))
        return self.get(username)

    def _update(self, username: str, **values: Any) -> None:
        with self._db.write() as conn:
            result = conn.execute(
                update(webui_users)
                .where(webui_users.c.username == username)
                .values(updated_at=utcnow(), **values)
            )
        if not result.rowcount:
            raise UnknownUser(f"no user {username!r}")

    # -- failed logins per client address --------------------------------------------

    def note_failed_login(self, client_ip: str, username: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                insert(login_failures).values(
                    time=utcnow(), client_ip=client_ip[:45], username=username[:64]
                )
            )

    def failed_logins_since(self, client_ip: str, since: datetime) -> int:
        since = require_aware(since, "since")
        t = login_failures
        with self._db.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(t)
                    .where(t.c.client_ip == client_ip, t.c.time >= since)
                ).scalar_one()
            )

    def purge_failed_logins(self, before: datetime) -> int:
        with self._db.write() as conn:
            return _rowcount(
                conn, delete(login_failures).where(login_failures.c.time < before)
            )


def _rowcount(conn: Connection, statement: Any) -> int:
    return int(conn.execute(statement).rowcount)


def _user(row: Any) -> User:
    return User(
        username=row["username"],
        password_hash=row["password_hash"],
        role=row["role"],
        must_change_password=bool(row["must_change_password"]),
        failed_logins=int(row["failed_logins"]),
        locked_until=row["locked_until"],
        session_version=int(row["session_version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_login_at=row["last_login_at"],
    )
