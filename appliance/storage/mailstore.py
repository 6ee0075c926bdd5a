"""Kept mail: one ``<txid>.eml`` file per message under ``<root>/<folder>/``.

Writes are crash-safe: the content goes to a hidden temporary file in the same folder,
is fsynced, renamed over the final name and the folder is fsynced, so a reader (or the
web UI) only ever sees complete files. Temporary files left by a crash are removed by
`enforce_retention`. Folder names come from a fixed set and transaction ids from a
strict pattern, so no caller can make us write outside the store.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

FOLDERS: tuple[str, ...] = (
    "spam",
    "notspam",
    "okmail",
    "discarded",
    "archive",
    "errors/spam",
    "errors/notspam",
    "virus",  # refused viruses, kept only with filters.clamav.keep_virus
)
DIR_MODE = 0o750
FILE_MODE = 0o640
SUFFIX = ".eml"
TMP_PREFIX = ".tmp-"
DEFAULT_TMP_MAX_AGE = 3600.0  # seconds; a write takes milliseconds, older ones crashed
_TXID_RE = re.compile(r"[0-9a-zA-Z_-]{1,64}")
_FILE_RE = re.compile(r"([0-9a-zA-Z_-]{1,64})\.eml")


class KeptFile(NamedTuple):
    txid: str
    size: int
    mtime: datetime  # UTC


def validate_folder(folder: str) -> str:
    if folder not in FOLDERS:
        raise ValueError(f"unknown mail folder {folder!r}; expected one of {', '.join(FOLDERS)}")
    return folder


def validate_txid(txid: str) -> str:
    if not isinstance(txid, str) or not _TXID_RE.fullmatch(txid):
        raise ValueError(f"invalid transaction id {txid!r}: expected [0-9a-zA-Z_-]{{1,64}}")
    return txid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MailStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._make_dir(self.root)
        for folder in FOLDERS:
            path = self.root / folder
            self._make_dir(path.parent)
            self._make_dir(path)

    @staticmethod
    def _make_dir(path: Path) -> None:
        try:
            path.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            return
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask

    def folder_path(self, folder: str) -> Path:
        return self.root / validate_folder(folder)

    def path(self, folder: str, txid: str) -> Path:
        return self.folder_path(folder) / f"{validate_txid(txid)}{SUFFIX}"

    def keep(self, folder: str, txid: str, content: bytes) -> Path:
        """Store `content` as ``<folder>/<txid>.eml`` (replacing an older copy) and
        return its path once it is durable."""
        final = self.path(folder, txid)
        directory = final.parent
        tmp = directory / f"{TMP_PREFIX}{txid}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(content)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        return final

    def read(self, folder: str, txid: str) -> bytes:
        """The kept message; FileNotFoundError if there is none."""
        return self.path(folder, txid).read_bytes()

    def exists(self, folder: str, txid: str) -> bool:
        return self.path(folder, txid).is_file()

    def delete(self, folder: str, txid: str) -> bool:
        try:
            self.path(folder, txid).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, folder: str) -> builtins.list[KeptFile]:
        """Complete kept files of `folder`, newest first (temporary files are hidden)."""
        files = [
            KeptFile(txid, size, datetime.fromtimestamp(mtime, UTC))
            for txid, size, mtime in self._scan(self.folder_path(folder))
        ]
        files.sort(key=lambda f: (f.mtime, f.txid), reverse=True)
        return files

    @staticmethod
    def _scan(directory: Path) -> builtins.list[tuple[str, int, float]]:
        found = []
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _FILE_RE.fullmatch(entry.name)
                if match is None:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                found.append((match.group(1), stat.st_size, stat.st_mtime))
        return found

    def enforce_retention(
        self,
        max_age_days: float | None,
        max_files_per_folder: int | None,
        *,
        tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    ) -> int:
        """Delete kept files older than `max_age_days`, then the oldest beyond
        `max_files_per_folder` in each folder, and temporary files older than
        `tmp_max_age` seconds (left by a crash). None disables a limit. Returns the
        number of files deleted."""
        if max_age_days is not None and max_age_days < 0:
            raise ValueError("max_age_days must not be negative")
        if max_files_per_folder is not None and max_files_per_folder < 0:
            raise ValueError("max_files_per_folder must not be negative")
        now = time.time()
        deleted = 0
        for folder in FOLDERS:
            directory = self.root / folder
            deleted += self._remove_stale_tmp(directory, now - tmp_max_age)
            files = sorted(self._scan(directory), key=lambda f: (f[2], f[0]))  # oldest first
            expired = 0
            if max_age_days is not None:
                cutoff = now - max_age_days * 86400
                while expired < len(files) and files[expired][2] < cutoff:
                    expired += 1
            doomed = expired
            if max_files_per_folder is not None:
                doomed = max(doomed, len(files) - max_files_per_folder)
            for txid, _size, _mtime in files[:doomed]:
                with contextlib.suppress(FileNotFoundError):
                    (directory / f"{txid}{SUFFIX}").unlink()
                    deleted += 1
        if deleted:
            log.info("mail retention deleted %d files", deleted)
        return deleted

    @staticmethod
    def _remove_stale_tmp(directory: Path, cutoff: float) -> int:
        removed = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed
