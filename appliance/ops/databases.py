"""The databases' part of an upgrade's rollback.

A new release migrates the databases when it starts (alembic, appliance/storage). If it
then fails the health gate, switching `current` back is not enough: the old release
would face a schema it does not know (alembic cannot even find the revision) and would
not start. So, inside the maintenance window, once the proxy and the web UI are stopped
and before the new release starts, every SQLite database in data_dir is copied with the
online backup API (appliance/backup/snapshot.py) into the rollback directory; on a
rollback, in the second window, those copies are put back.

Only a database whose schema changed is put back (its alembic revision or any table,
index or trigger definition). One whose schema the failed release left alone is kept as
it is: what that release wrote in its few seconds (message-log rows of mail that really
passed, greylist and penalty-box updates, audit entries) is ordinary data the old
release reads, and its mail was really delivered, so dropping those rows would only lose
the record of it. A migrated database cannot be kept: its rows written by the failed
release are lost with the rollback (README, "Upgrades and rollback").

Putting back goes through the online backup API as well, into the existing file: its
WAL is handled by SQLite and the file keeps its owner and mode (the upgrade runs as
root, the proxy does not).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.backup.snapshot import BUSY_TIMEOUT_MS, find_databases, snapshot_database

ROLLBACK_DIR = "upgrade-rollback"
ASIDE_DIR = "created-by-failed-release"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SavedDatabase:
    live: Path
    copy: Path
    schema: str  # schema_fingerprint() of the copy


def schema_fingerprint(conn: sqlite3.Connection) -> str:
    """The alembic revision and every definition in sqlite_master, hashed."""
    digest = hashlib.sha256()
    try:
        for (version,) in conn.execute("SELECT version_num FROM alembic_version ORDER BY 1"):
            digest.update(f"revision {version}\n".encode())
    except sqlite3.OperationalError:
        digest.update(b"no alembic_version\n")
    for row in conn.execute(
        "SELECT type, name, tbl_name, COALESCE(sql, '') FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ):
        digest.update(("\x1f".join(row) + "\n").encode())
    return digest.hexdigest()


def _fingerprint_of(path: Path) -> str:
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    ) as conn:
        return schema_fingerprint(conn)


def copy_into(source: Path, target: Path) -> None:
    """`target` becomes `source`, page by page in one transaction of the online backup API."""
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000)) as dst:
        src.backup(dst)


class DatabaseRollback:
    def __init__(self, data_dir: Path, directory: Path) -> None:
        self.data_dir = Path(data_dir)
        self.directory = Path(directory)
        self.saved: list[SavedDatabase] = []

    def save(self, progress: Progress) -> None:
        """Snapshot every database (call with the services stopped)."""
        if self.directory.exists():
            shutil.rmtree(self.directory)  # a previous upgrade's
        self.directory.mkdir(parents=True, mode=0o700)
        for live in find_databases(self.data_dir):
            copy = self.directory / live.name
            snapshot_database(live, copy)
            self.saved.append(SavedDatabase(live, copy, _fingerprint_of(copy)))
        names = ", ".join(s.live.name for s in self.saved) or "none"
        progress(f"databases saved for a rollback: {names} (in {self.directory})")

    def put_back(self, progress: Progress) -> list[str]:
        """Put back every database whose schema changed since save(); move aside the ones
        the failed release created. Returns the names put back."""
        restored = []
        for saved in self.saved:
            if not saved.live.exists():
                copy_into(saved.copy, saved.live)
                restored.append(saved.live.name)
                continue
            if _fingerprint_of(saved.live) == saved.schema:
                continue
            copy_into(saved.copy, saved.live)
            if _fingerprint_of(saved.live) != saved.schema:
                raise OSError(f"{saved.live}: still not at the saved schema after putting it back")
            restored.append(saved.live.name)
        known = {s.live.name for s in self.saved}
        for created in find_databases(self.data_dir):
            if created.name not in known:
                self._move_aside(created)
        if restored:
            progress(f"databases put back to the schema of before the upgrade: "
                     f"{', '.join(restored)} (rows the failed release wrote are lost)")
        else:
            progress("databases: the failed release changed no schema; kept as they are")
        return restored

    def _move_aside(self, database: Path) -> None:
        aside = self.directory / ASIDE_DIR
        aside.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{database}{suffix}")
            if path.exists():
                os.replace(path, aside / path.name)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
