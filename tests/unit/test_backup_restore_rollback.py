"""The restore's rollback (appliance/backup/restore.py Rollback) on a real data directory:
what a failed restore replaced goes back, and nothing else is undone."""

from __future__ import annotations

from pathlib import Path

from appliance.backup.restore import MAIN_DB, Rollback, copy_tables
from appliance.storage.facade import Storage
from tests.support.backup_appliance import WHITELIST, log_entry


def test_a_rolled_back_list_restore_keeps_what_was_logged_meanwhile(tmp_path: Path) -> None:
    live_dir, backup_dir = tmp_path / "live", tmp_path / "backup"
    with Storage.open(backup_dir) as storage:
        storage.lists.add_many("whitelist", ["old@backup.example"], source="ui")
    with Storage.open(live_dir) as storage:
        storage.lists.add_many("whitelist", WHITELIST[:3], source="ui")
        storage.messagelog.record_many([log_entry(1)])
        counter_before = storage.lists.change_counter()
    live = live_dir / MAIN_DB

    rollback = Rollback(tmp_path / "rollback")
    rollback.save_database(live, ["list_entries"])
    copy_tables(backup_dir / MAIN_DB, live, ["list_entries"])  # the restore
    with Storage.open(live_dir) as storage:  # the restored proxy judged a message
        assert [e.value for e in storage.lists.entries("whitelist")] == ["old@backup.example"]
        storage.messagelog.record_many([log_entry(2)])
    rollback.put_back()

    with Storage.open(live_dir) as storage:
        assert sorted(e.value for e in storage.lists.entries("whitelist")) == WHITELIST[:3]
        assert storage.messagelog.get("tx00001") and storage.messagelog.get("tx00002")
        # Workers notice list changes by this counter: it never goes back.
        assert storage.lists.change_counter() > counter_before


def test_a_file_the_restore_added_is_removed_and_a_changed_one_comes_back(
    tmp_path: Path,
) -> None:
    changed, added = tmp_path / "config-overrides.yml", tmp_path / "mail" / "new.eml"
    changed.write_text("test_mode: true\n")
    changed.chmod(0o640)
    rollback = Rollback(tmp_path / "rollback")
    rollback.save_file(changed)
    rollback.save_file(added)
    changed.write_text("test_mode: false\n")
    added.parent.mkdir()
    added.write_text("Subject: x\r\n\r\n")
    rollback.put_back()
    assert changed.read_text() == "test_mode: true\n"
    assert changed.stat().st_mode & 0o777 == 0o640
    assert not added.exists()
