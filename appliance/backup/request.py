""""Back up now" from the web UI, without giving the UI root: it writes the request file
``data_dir/run/backup-request`` (who and when); the systemd path unit
postwall-backup-request.path (PathExists=) starts postwall-backup.service, and
`postwall backup` removes the file as it starts. One click is one run; a second click
while a request is pending finds the file and is told so.

The file is written by the unprivileged service user and read by root: root opens it
without following symlinks, reads a few bytes and only ever uses the parsed name as text.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.backup.errors import BackupError

REQUEST_NAME = "backup-request"
MAX_REQUEST_BYTES = 4096
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class BackupRequest:
    by: str
    at: datetime


def request_path(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / REQUEST_NAME


def read_request(data_dir: Path) -> BackupRequest | None:
    """The pending request, or None. A file that does not parse still counts as a
    request (by "unknown", at its modification time): the path unit reacts to it too."""
    path = request_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink (ELOOP) or unreadable: still there, still a request
        return _unknown(path)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_REQUEST_BYTES)
        modified = datetime.fromtimestamp(os.fstat(handle.fileno()).st_mtime, UTC)
    try:
        data = json.loads(raw.decode("utf-8"))
        by = str(data["by"])[:MAX_NAME_CHARS]
        at = datetime.fromisoformat(data["at"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return BackupRequest("unknown", modified)
    return BackupRequest(by, at if at.tzinfo else at.replace(tzinfo=UTC))


def _unknown(path: Path) -> BackupRequest | None:
    try:
        modified = path.lstat().st_mtime
    except FileNotFoundError:
        return None
    return BackupRequest("unknown", datetime.fromtimestamp(modified, UTC))


def write_request(data_dir: Path, by: str, now: datetime) -> BackupRequest | None:
    """Create the request atomically unless one is pending. Returns None when it was
    created, else the pending request (two admins clicking at once make one request)."""
    path = request_path(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".backup-request-", dir=path.parent)
    except OSError as exc:
        raise BackupError(f"cannot write the backup request in {path.parent}: "
                          f"{exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"by": by, "at": now.astimezone(UTC).isoformat(timespec="seconds")},
                      handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if the file exists: no check-then-write race
        except FileExistsError:
            return read_request(data_dir) or BackupRequest("unknown", now)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def consume_request(data_dir: Path) -> BackupRequest | None:
    """Take the pending request (read, then remove): the run that starts serves it."""
    request = read_request(data_dir)
    if request is None:
        return None
    with contextlib.suppress(FileNotFoundError):
        request_path(data_dir).unlink()
    return request
