"""Kept mail files: layout, permissions, crash-safe writes, traversal, retention."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.storage.mailstore import FOLDERS, TMP_PREFIX, MailStore

MESSAGE = b"From: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def store(tmp_path: Path, umask: None) -> MailStore:
    return MailStore(tmp_path / "mail")


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_init_creates_every_folder_with_mode_0750(tmp_path: Path, umask: None) -> None:
    root = tmp_path / "var" / "mail"
    MailStore(root)
    for folder in (".", "errors", *FOLDERS):
        path = root / folder
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, folder
    MailStore(root)  # idempotent


def test_keep_read_list_delete(store: MailStore) -> None:
    path = store.keep("spam", "0190abc-def_1", MESSAGE)
    assert path == store.root / "spam" / "0190abc-def_1.eml" == store.path("spam", "0190abc-def_1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert store.read("spam", "0190abc-def_1") == MESSAGE
    assert store.exists("spam", "0190abc-def_1")
    kept = store.list("spam")
    assert [(k.txid, k.size) for k in kept] == [("0190abc-def_1", len(MESSAGE))]
    assert kept[0].mtime.tzinfo is UTC
    assert abs(kept[0].mtime - datetime.now(UTC)) < timedelta(minutes=1)
    assert store.list("notspam") == []

    store.keep("errors/notspam", "0190abc-def_1", b"other")
    assert store.read("errors/notspam", "0190abc-def_1") == b"other"
    assert store.read("spam", "0190abc-def_1") == MESSAGE

    assert store.delete("spam", "0190abc-def_1") is True
    assert store.delete("spam", "0190abc-def_1") is False
    with pytest.raises(FileNotFoundError):
        store.read("spam", "0190abc-def_1")


def test_keep_replaces_an_older_copy_and_list_is_newest_first(store: MailStore) -> None:
    store.keep("archive", "a", b"first")
    store.keep("archive", "a", b"second")
    assert store.read("archive", "a") == b"second"
    store.keep("archive", "b", b"x")
    age(store.path("archive", "a"), 60)
    assert [k.txid for k in store.list("archive")] == ["b", "a"]
    assert sorted(os.listdir(store.root / "archive")) == ["a.eml", "b.eml"]


@pytest.mark.parametrize(
    "txid",
    ["../escape", "a/b", "..", ".", "", "x" * 65, "a.eml", "a b", "ä", "a\x00", "/etc/passwd"],
)
def test_invalid_transaction_ids_are_refused(store: MailStore, txid: str) -> None:
    for call in (
        lambda: store.keep("spam", txid, MESSAGE),
        lambda: store.path("spam", txid),
        lambda: store.read("spam", txid),
        lambda: store.delete("spam", txid),
    ):
        with pytest.raises(ValueError, match="invalid transaction id"):
            call()
    assert sorted(p.name for p in store.root.parent.iterdir()) == ["mail"]


@pytest.mark.parametrize(
    "folder", ["../mail", "errors", "errors/../spam", "/tmp", "spam/", "Spam", "", "quarantine"]
)
def test_invalid_folders_are_refused(store: MailStore, folder: str) -> None:
    with pytest.raises(ValueError, match="unknown mail folder"):
        store.keep(folder, "abc", MESSAGE)
    with pytest.raises(ValueError, match="unknown mail folder"):
        store.list(folder)


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temp_file(
    store: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.keep("spam", "tx1", b"old complete content")
    real_write = os.write
    calls = 0

    def write_then_fail(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data[:10]))  # a short write, then the disk is full

    monkeypatch.setattr(os, "write", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.keep("spam", "tx1", b"new content that never completes")
    with pytest.raises(OSError, match="No space left"):
        store.keep("spam", "tx2", b"brand new message")
    monkeypatch.undo()

    assert store.read("spam", "tx1") == b"old complete content"
    assert not store.exists("spam", "tx2")
    assert sorted(os.listdir(store.root / "spam")) == ["tx1.eml"]


def test_readers_only_ever_see_complete_files(store: MailStore) -> None:
    size = 512 * 1024
    versions = [b"a" * size, b"b" * size]
    store.keep("okmail", "busy", versions[0])
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for kept in store.list("okmail"):
                data = store.read("okmail", kept.txid)
                if data not in versions:
                    errors.append(f"torn read of {len(data)} bytes")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            store.keep("okmail", "busy", versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert [k.txid for k in store.list("okmail")] == ["busy"]


def test_temp_files_are_hidden_and_stale_ones_removed_by_retention(store: MailStore) -> None:
    store.keep("spam", "done", MESSAGE)
    crashed = store.root / "spam" / f"{TMP_PREFIX}crashed-1234abcd"
    crashed.write_bytes(b"half a mess")
    in_progress = store.root / "discarded" / f"{TMP_PREFIX}writing-5678abcd"
    in_progress.write_bytes(b"being written right now")
    age(crashed, 2 * 3600)

    assert [k.txid for k in store.list("spam")] == ["done"]
    assert store.list("discarded") == []
    assert store.enforce_retention(None, None) == 1
    assert not crashed.exists()
    assert in_progress.exists()  # fresh: a write may still be going on
    assert store.read("spam", "done") == MESSAGE


def test_retention_by_age(store: MailStore) -> None:
    for i in range(5):
        store.keep("spam", f"s{i}", MESSAGE)
        age(store.path("spam", f"s{i}"), i * 86400 + 60)
    store.keep("notspam", "old", MESSAGE)
    age(store.path("notspam", "old"), 30 * 86400)

    assert store.enforce_retention(2, None) == 3 + 1
    assert sorted(k.txid for k in store.list("spam")) == ["s0", "s1"]
    assert store.list("notspam") == []
    assert store.enforce_retention(2, None) == 0


def test_retention_by_count_deletes_oldest_first(store: MailStore) -> None:
    for i in range(10):
        store.keep("archive", f"a{i}", MESSAGE)
        age(store.path("archive", f"a{i}"), 1000 - i)  # a9 is the newest
    for i in range(3):
        store.keep("spam", f"s{i}", MESSAGE)

    assert store.enforce_retention(None, 4) == 6
    assert [k.txid for k in store.list("archive")] == ["a9", "a8", "a7", "a6"]
    assert len(store.list("spam")) == 3  # under the limit, untouched
    assert store.enforce_retention(14, 4) == 0
    assert store.enforce_retention(None, 0) == 4 + 3
    with pytest.raises(ValueError):
        store.enforce_retention(-1, None)


def test_retention_ignores_foreign_files(store: MailStore) -> None:
    foreign = store.root / "spam" / "README"
    foreign.write_text("admin notes")
    age(foreign, 100 * 86400)
    assert store.enforce_retention(1, 0) == 0
    assert foreign.exists()
