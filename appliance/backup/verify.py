"""Proving a backup can be restored: unpack it into a scratch directory and check it.

`open_backup` is the first step of every restore too: decrypt (authenticating every
octet), unpack only the files the manifest lists, and compare each one's size and
SHA-256 with the manifest. `verify_backup` then loads the configuration from the copy and
opens every database, comparing its row counts with the manifest.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from appliance.backup.archive import unpack
from appliance.backup.crypto import decrypt_file, is_encrypted
from appliance.backup.errors import BackupError
from appliance.backup.manifest import Manifest, sha256_file
from appliance.backup.snapshot import count_rows
from appliance.config import loader


@dataclass(frozen=True)
class VerifyReport:
    manifest: Manifest
    files: int
    size: int
    rows: int

    def summary(self) -> str:
        return (f"{self.files} files, {self.size / 1e6:.1f} MB unpacked, {self.rows} database "
                f"rows, schema {self.manifest.schema_version or '-'}")


def open_backup(archive: Path, scratch: Path, key: bytes | None) -> tuple[Manifest, Path]:
    """Unpack `archive` into scratch/tree after checking every hash; returns the manifest
    and the tree. Nothing outside `scratch` is written."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        encrypted = is_encrypted(archive)
    except OSError as exc:
        raise BackupError(f"{archive}: cannot read: {exc.strerror}") from exc
    tarball = archive
    if encrypted:
        if key is None:
            raise BackupError(f"{archive.name} is encrypted: give the key file "
                              "(backup.encryption_key_file or --key-file)")
        tarball = scratch / "backup.tar.gz"
        decrypt_file(archive, tarball, key)
    tree = scratch / "tree"
    manifest = unpack(tarball, tree)
    if tarball != archive:
        tarball.unlink()
    if manifest.encrypted != encrypted:
        raise BackupError(f"{archive.name}: the manifest says encrypted={manifest.encrypted}, "
                          "the file says otherwise: it was tampered with")
    for entry in manifest.files:
        path = tree / entry.path
        size = path.stat().st_size
        if size != entry.size:
            raise BackupError(f"{archive.name}: {entry.path} has {size} octets, the manifest "
                              f"says {entry.size}: the backup is corrupted")
        if sha256_file(path) != entry.sha256:
            raise BackupError(f"{archive.name}: {entry.path} does not match its SHA-256 in the "
                              "manifest: the backup is corrupted")
    return manifest, tree


def check_contents(manifest: Manifest, tree: Path, name: str) -> int:
    """The configuration loads and the databases open with the manifest's row counts.
    Returns the number of rows checked."""
    base = next((f for f in manifest.files if f.path.startswith("config/")), None)
    overrides = tree / "data" / loader.OVERRIDES_NAME
    if base is not None:
        try:
            loader.load(tree / base.path, overrides)
        except loader.ConfigError as exc:
            raise BackupError(f"{name}: its configuration does not load: {exc}") from exc
    rows = 0
    for database in manifest.databases:
        path = tree / database.path
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                counts = count_rows(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise BackupError(f"{name}: {database.path} does not open: {exc}") from exc
        if result != "ok":
            raise BackupError(f"{name}: {database.path} fails quick_check: {result}")
        if counts != database.tables:
            differ = sorted(t for t in set(counts) | set(database.tables)
                            if counts.get(t) != database.tables.get(t))
            raise BackupError(f"{name}: {database.path}: row counts differ from the manifest "
                              f"in {', '.join(differ)}")
        rows += sum(counts.values())
    return rows


def verify_backup(archive: Path, scratch: Path, key: bytes | None) -> VerifyReport:
    manifest, tree = open_backup(archive, scratch, key)
    rows = check_contents(manifest, tree, archive.name)
    return VerifyReport(manifest, len(manifest.files), sum(f.size for f in manifest.files), rows)
