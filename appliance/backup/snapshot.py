"""Consistent copies of the SQLite databases while the proxy keeps writing to them.

SQLite's online backup API copies the database page by page inside one read transaction
(all pages in one step), so the copy is the database as of one instant, whatever the
writers do meanwhile; copying the file itself could catch a half-written page or miss
what still sits in the WAL. The copy is switched to a single file (no WAL) and checked
with `PRAGMA quick_check` before its row counts go into the manifest.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from appliance.backup.errors import BackupError

SQLITE_MAGIC = b"SQLite format 3\x00"
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
BUSY_TIMEOUT_MS = 30_000
SKIPPED_TABLES = ("alembic_version",)


@dataclass(frozen=True)
class Snapshot:
    source: Path
    copy: Path
    tables: dict[str, int]  # table -> rows, in the copy
    schema_version: str | None  # alembic revision, None if the database has none


def find_databases(data_dir: Path) -> list[Path]:
    """Every SQLite database directly in data_dir (run/ holds only runtime files)."""
    found = []
    for path in sorted(Path(data_dir).iterdir()):
        if path.is_file() and path.suffix in DB_SUFFIXES and _is_sqlite(path):
            found.append(path)
    return found


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def snapshot_database(source: Path, copy: Path) -> Snapshot:
    copy.parent.mkdir(parents=True, exist_ok=True)
    if copy.exists():
        copy.unlink()
    try:
        # Read-only: the backup must never create, migrate or checkpoint the live file.
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: cannot open the database: {exc}") from exc
    try:
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)  # pages=-1: one step, one consistent read transaction
            dst.execute("PRAGMA journal_mode = DELETE")
            result = dst.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise BackupError(f"{source}: the snapshot fails SQLite's quick_check: {result}")
            tables = count_rows(dst)
            version = schema_version(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: online backup failed: {exc}") from exc
    finally:
        src.close()
    return Snapshot(source, copy, tables, version)


def count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {
        name: int(conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0])  # noqa: S608 - names from sqlite_master
        for name in names if name not in SKIPPED_TABLES
    }


def schema_version(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None
