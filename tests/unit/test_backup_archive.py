"""Backup names, the manifest's path rules, the encryption format and the lock."""

from __future__ import annotations

import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.backup import crypto
from appliance.backup.archive import make_name, parse_name, unpack
from appliance.backup.errors import BackupError
from appliance.backup.lock import exclusive_run
from appliance.backup.manifest import Manifest, validate_archive_path


def test_names_round_trip_and_sort_by_time():
    when = datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=UTC)
    name = make_name("mx 1.example.com", when, encrypted=True)
    assert name.name == "postwall-mx-1.example.com-20240506T070809Z.tar.gz.enc"
    assert parse_name(name.name) == name
    assert parse_name("postwall-a-20240506T070809Z.tar.gz").encrypted is False
    for bad in ("backup-2024-05-06.tar.gz", "postwall-a-2024.tar.gz",
                ".partial-postwall-a-20240506T070809Z.tar.gz",
                "postwall-a-20241306T070809Z.tar.gz"):
        assert parse_name(bad) is None


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../x", "data/../../x", "data", "other/x", "data/./x", "config/a\\b",
])
def test_unsafe_archive_paths_are_refused(path):
    with pytest.raises(BackupError, match="unsafe path"):
        validate_archive_path(path)


def test_a_tarball_with_an_unlisted_member_is_refused(tmp_path: Path):
    manifest = Manifest("h", "2024-01-01T00:00:00+00:00", "0", None)
    (tmp_path / "manifest.json").write_bytes(manifest.to_json())
    (tmp_path / "evil").write_text("x")
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "manifest.json", "manifest.json")
        tar.add(tmp_path / "evil", "data/evil")
    with pytest.raises(BackupError, match="not in the manifest"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    crypto.keygen(tmp_path / "key")
    return crypto.load_key(tmp_path / "key")


@pytest.mark.parametrize("size", [0, 1, crypto.CHUNK_SIZE, 2 * crypto.CHUNK_SIZE + 5])
def test_encryption_round_trips_every_size(tmp_path: Path, key: bytes, size: int):
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    crypto.encrypt_file(plain, tmp_path / "enc", key)
    assert crypto.is_encrypted(tmp_path / "enc")
    crypto.decrypt_file(tmp_path / "enc", tmp_path / "dec", key)
    assert (tmp_path / "dec").read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate_chunk", "truncate_boundary", "drop_final"])
def test_damaged_ciphertext_is_refused_and_leaves_no_output(tmp_path: Path, key: bytes, damage):
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(2 * crypto.CHUNK_SIZE + 100))
    enc = tmp_path / "enc"
    crypto.encrypt_file(plain, enc, key)
    data = bytearray(enc.read_bytes())
    block = crypto.CHUNK_SIZE + crypto.TAG_SIZE
    if damage == "flip":
        data[crypto.HEADER_SIZE + block + 10] ^= 1
    elif damage == "truncate_chunk":
        data = data[: crypto.HEADER_SIZE + block + 100]
    elif damage == "truncate_boundary":
        data = data[: crypto.HEADER_SIZE + 2 * block]
    else:
        data = data[: crypto.HEADER_SIZE + block]
    enc.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"truncated|corrupted"):
        crypto.decrypt_file(enc, tmp_path / "dec", key)
    assert not (tmp_path / "dec").exists()


def test_a_wrong_key_is_named_as_such(tmp_path: Path, key: bytes):
    (tmp_path / "plain").write_bytes(b"secret state")
    crypto.encrypt_file(tmp_path / "plain", tmp_path / "enc", key)
    crypto.keygen(tmp_path / "other")
    with pytest.raises(BackupError, match="another key"):
        crypto.decrypt_file(tmp_path / "enc", tmp_path / "dec", crypto.load_key(tmp_path / "other"))


def test_keygen_never_overwrites_and_key_files_must_be_private(tmp_path: Path):
    path = tmp_path / "key"
    crypto.keygen(path)
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_text()
    with pytest.raises(BackupError, match="refusing to overwrite"):
        crypto.keygen(path)
    assert path.read_text() == before
    path.chmod(0o644)
    with pytest.raises(BackupError, match="chmod 600"):
        crypto.load_key(path)
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(BackupError, match="hex digits"):
        crypto.load_key(path)


def test_the_lock_refuses_a_second_run(tmp_path: Path):
    busy = pytest.raises(BackupError, match=r"another backup or restore is running \(pid")
    with exclusive_run(tmp_path, "backup"), busy, exclusive_run(tmp_path, "restore"):
        pass
    with exclusive_run(tmp_path, "backup"):
        pass  # released
