"""The upgrade's database rollback (appliance/ops/databases.py) and the maintenance flag
(appliance/ops/flag.py), on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.ops.databases import ASIDE_DIR, DatabaseRollback
from appliance.ops.flag import active_flag, flag_path, lower_flag, raise_flag


def make_db(path: Path, revision: str = "0005", rows: int = 2) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
        conn.execute("CREATE TABLE message_log (id INTEGER PRIMARY KEY, subject TEXT)")
        conn.executemany("INSERT INTO message_log (subject) VALUES (?)",
                         [(f"before {n}",) for n in range(rows)])
    conn.close()


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        result = conn.execute(sql).fetchall()
    conn.close()
    return result


def noop(_line: str) -> None:
    pass


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "postwall.db")
    return data


def test_a_migrated_database_is_put_back_with_its_old_revision(data_dir, tmp_path):
    live = data_dir / "postwall.db"
    rollback = DatabaseRollback(data_dir, tmp_path / "rollback")
    rollback.save(noop)
    # What a new release does at start: a migration, then rows of its own.
    with sqlite3.connect(live) as conn:
        conn.execute("CREATE TABLE new_feature (id INTEGER)")
        conn.execute("UPDATE alembic_version SET version_num = '9901'")
        conn.execute("INSERT INTO message_log (subject) VALUES ('by the failed release')")
    conn.close()
    os.chmod(live, 0o640)
    assert rollback.put_back(noop) == ["postwall.db"]
    assert rows(live, "SELECT version_num FROM alembic_version") == [("0005",)]
    assert rows(live, "SELECT name FROM sqlite_master WHERE name = 'new_feature'") == []
    assert rows(live, "SELECT subject FROM message_log ORDER BY id") == [
        ("before 0",), ("before 1",)]
    assert oct(live.stat().st_mode & 0o777) == oct(0o640)  # the file itself, not a new one
    assert rows(live, "PRAGMA journal_mode") == [("wal",)]


def test_an_unmigrated_database_keeps_what_the_failed_release_wrote(data_dir, tmp_path):
    live = data_dir / "postwall.db"
    rollback = DatabaseRollback(data_dir, tmp_path / "rollback")
    rollback.save(noop)
    with sqlite3.connect(live) as conn:
        conn.execute("INSERT INTO message_log (subject) VALUES ('by the failed release')")
    conn.close()
    assert rollback.put_back(noop) == []
    assert ("by the failed release",) in rows(live, "SELECT subject FROM message_log")


def test_a_database_the_failed_release_created_is_moved_aside(data_dir, tmp_path):
    rollback = DatabaseRollback(data_dir, tmp_path / "rollback")
    rollback.save(noop)
    make_db(data_dir / "extra.db", revision="1")
    rollback.put_back(noop)
    assert not (data_dir / "extra.db").exists()
    assert (tmp_path / "rollback" / ASIDE_DIR / "extra.db").is_file()


def test_save_replaces_an_earlier_rollback_and_is_owner_only(data_dir, tmp_path):
    directory = tmp_path / "rollback"
    directory.mkdir()
    (directory / "stale.db").write_text("old")
    rollback = DatabaseRollback(data_dir, directory)
    rollback.save(noop)
    assert sorted(p.name for p in directory.iterdir()) == ["postwall.db"]
    assert directory.stat().st_mode & 0o077 == 0
    rollback.discard()
    assert not directory.exists()


def test_the_flag_names_a_living_window(tmp_path):
    assert active_flag(tmp_path) is None
    raise_flag(tmp_path, "upgrade")
    assert active_flag(tmp_path) == "upgrade"
    assert flag_path(tmp_path).stat().st_mode & 0o777 == 0o644  # the proxy's user reads it
    lower_flag(tmp_path)
    lower_flag(tmp_path)  # twice is fine
    assert active_flag(tmp_path) is None


def test_a_flag_whose_window_is_gone_is_stale(tmp_path):
    # Raised by a process that has exited since (a killed upgrade).
    subprocess.run([sys.executable, "-c", "import sys; from appliance.ops.flag import "
                    "raise_flag; raise_flag(sys.argv[1], 'restore')", str(tmp_path)],
                   check=True)
    assert flag_path(tmp_path).exists()
    assert active_flag(tmp_path) is None


@pytest.mark.parametrize("text", ["", "garbage", "12 x", "-1 5 upgrade"])
def test_a_damaged_flag_is_ignored(tmp_path, text):
    flag_path(tmp_path).parent.mkdir(parents=True, exist_ok=True)
    flag_path(tmp_path).write_text(text)
    assert active_flag(tmp_path) is None
