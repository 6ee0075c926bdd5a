"""The manifest: what a backup holds, and the facts needed to trust and restore it.

Every file is listed with its path in the archive, size, sha256 and component; each
database with its tables' row counts. Archive paths name where a file goes back to:

- ``config/<name>``        the base configuration file (restored to --config's path)
- ``data/<relative>``      a file under data_dir (restored under the current data_dir)
- ``system/<absolute>``    a system file such as /etc/postfix/main.cf
- ``info/<name>``          facts for the operator (package list, version); never restored
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.backup.errors import BackupError

MANIFEST_NAME = "manifest.json"
FORMAT = 1
COMPONENTS = ("config", "lists", "statistics", "state", "mail", "system")
# Restored when no --only is given: system files belong to the Ansible roles.
DEFAULT_RESTORE = ("config", "lists", "statistics", "state", "mail")
ROOTS = ("config", "data", "system", "info")

# Which component each table of postwall.db belongs to (selective restore copies tables).
TABLE_COMPONENTS: dict[str, str] = {
    "list_entries": "lists",
    "personal_blacklist": "lists",
    "message_log": "statistics",
    "message_recipients": "statistics",
    "message_symbols": "statistics",
    "bayes_tokens": "statistics",
    "training_ledger": "statistics",
}
DEFAULT_TABLE_COMPONENT = "state"  # greylist, penalty box, users, audit log, counters...
_SAFE_PART = re.compile(r"[^\x00/\\]+")


def table_component(table: str) -> str:
    return TABLE_COMPONENTS.get(table, DEFAULT_TABLE_COMPONENT)


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str
    component: str


@dataclass
class DatabaseEntry:
    path: str  # archive path of the snapshot
    schema_version: str | None
    tables: dict[str, int]  # table -> row count

    def components(self) -> set[str]:
        return {table_component(t) for t in self.tables}


@dataclass
class Manifest:
    host: str
    created: str  # UTC, ISO 8601
    appliance_version: str
    schema_version: str | None  # alembic revision of postwall.db
    encrypted: bool = False
    files: list[FileEntry] = field(default_factory=list)
    databases: list[DatabaseEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw: dict[str, Any] = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupError(
                    f"manifest format {raw.get('format')!r} is not {FORMAT}: made by another "
                    "version of postwall"
                )
            files = [FileEntry(**f) for f in raw.pop("files")]
            databases = [DatabaseEntry(**d) for d in raw.pop("databases")]
            manifest = cls(**raw, files=files, databases=databases)
        except BackupError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BackupError(f"the manifest is malformed: {exc}") from exc
        for entry in manifest.files:
            validate_archive_path(entry.path)
            if entry.component not in COMPONENTS:
                raise BackupError(f"manifest: unknown component {entry.component!r}")
        return manifest

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def database(self, path: str) -> DatabaseEntry | None:
        return next((d for d in self.databases if d.path == path), None)

    def components(self) -> set[str]:
        found = {f.component for f in self.files}
        for database in self.databases:
            found |= database.components()
        return found


def validate_archive_path(path: str) -> PurePosixPath:
    """Archive paths come from a file someone else may have written: allow only relative
    paths under a known root, without '..', so extraction cannot escape its directory."""
    raw = path.split("/")
    pure = PurePosixPath(path)
    if (
        pure.is_absolute()
        or len(raw) < 2
        or raw[0] not in ROOTS
        or any(p in ("..", ".") or not _SAFE_PART.fullmatch(p) for p in raw)
    ):
        raise BackupError(f"unsafe path in backup: {path!r}")
    return pure


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(root: Path, relative: str, component: str) -> FileEntry:
    path = root / relative
    return FileEntry(relative, path.stat().st_size, sha256_file(path), component)
