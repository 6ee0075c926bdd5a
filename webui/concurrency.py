"""Optimistic concurrency for edits in the web UI: two administrators never silently
overwrite each other.

Settings: a page carries the version of the documents it was rendered from (a hash of
the base file and the overrides file) and when it was loaded. At save time, under the
overrides lock, a different current version means someone saved in the meantime; the
snapshot of the documents as they were (kept here, content-addressed, owner-only) says
which settings changed. A change to a setting of the section being saved refuses the
save with that difference (409); changes to other sections merge, because a save only
writes the fields of its own section.

Lists: forms carry when the page was loaded. An add, remove or import is refused only
for values someone else added, changed or removed since then (the entry's `updated_at`,
removals from the audit log); other entries merge, since each form names its values.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.storage.audit import AuditEntry

VERSIONS_DIRNAME = "config-versions"
KEEP_VERSIONS = 200  # snapshots kept; a page older than 200 saves is simply refused
AUDIT_LOOKBACK = 500  # audit rows searched for who changed something


def config_version(base_text: bytes, overrides_text: bytes) -> str:
    digest = hashlib.sha256()
    for part in (base_text, overrides_text):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def parse_time(text: str | None) -> datetime | None:
    """A page's `loaded_at` (ISO 8601, UTC); None if absent or not a time."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return min(value, datetime.now(UTC))  # a time from the future hides nothing


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Snapshot:
    base: dict[str, Any]
    overrides: dict[str, Any]


class ConfigVersions:
    """Snapshots of (base, overrides) by version, so a stale page's starting point is
    known at save time. Files are mode 0600 in the UI's private directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, version: str) -> Path | None:
        if len(version) != 32 or not all(c in "0123456789abcdef" for c in version):
            return None  # never a path from a form
        return self.directory / f"{version}.json"

    def remember(self, version: str, base: Mapping[str, Any],
                 overrides: Mapping[str, Any]) -> None:
        path = self._path(version)
        if path is None:
            return
        if path.exists():
            os.utime(path)  # recently used: pruned last
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"base": base, "overrides": overrides}, handle, default=str)
        os.replace(tmp, path)
        self._prune()

    def recall(self, version: str) -> Snapshot | None:
        path = self._path(version)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Snapshot(dict(data.get("base") or {}), dict(data.get("overrides") or {}))

    def _prune(self) -> None:
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for stale in files[:-KEEP_VERSIONS]:
            stale.unlink(missing_ok=True)


# -- what changed, and who did it ---------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One setting or list entry someone else changed since the page was loaded."""

    key: str  # dotted setting path, or the list value
    before: str  # as shown when the page was loaded
    now: str  # as it is now
    by: str  # "alice at 2026-01-02 10:00 UTC", or where it came from if not in the audit log
    yours: str | None = None  # what this administrator submitted for it, if anything


@dataclass
class Conflict:
    changes: list[Change]
    unsaved: list[Change] = field(default_factory=list)  # the refused edits, to redo
    message: str = ""


def changed_paths(before: Mapping[str, Any], now: Mapping[str, Any],
                  paths: Iterable[str]) -> list[str]:
    from webui.settings_form import _same, get_path

    return [p for p in paths if not _same(get_path(before, p, None), get_path(now, p, None))]


def who(entries: Sequence[AuditEntry], match: Any, since: datetime | None,
        fallback: str) -> str:
    """'alice at 2026-01-02 10:00:01 UTC' for the newest audit entry that `match`es after
    `since`, else `fallback`."""
    for entry in entries:  # newest first
        if since is not None and entry.time < since:
            break
        if match(entry):
            return f"{entry.username} at {entry.time:%Y-%m-%d %H:%M:%S} UTC"
    return fallback


_thread_locks: dict[str, threading.Lock] = {}


@contextmanager
def edit_lock(directory: Path, name: str) -> Iterator[None]:
    """One change of `name` (the settings, the lists) at a time, across the server's
    threads and any other process: check what changed, then write, under this lock."""
    thread_lock = _thread_locks.setdefault(name, threading.Lock())
    path = directory / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with thread_lock, open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
