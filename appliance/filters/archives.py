"""Look inside zip attachments for member names, safely (pure, no I/O).

Only member *names* are wanted, so ordinary members are never decompressed; only nested
zips are read, and only within a budget of uncompressed octets, a nesting depth and a
number of archives. Sizes declared by the archive are checked before anything is read,
so a zip bomb (42.zip, a nested-zip bomb, gigabytes of zeros, overlapping entries) is
recognised from its directory in microseconds. Nothing here raises on hostile input:
every problem becomes an `ArchiveIssue`.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
# Declared uncompressed size per compressed octet beyond which an archive is a bomb.
# Deflate tops out near 1032:1; real documents and logs stay well below 100:1.
BOMB_RATIO = 100
# A central directory larger than this per allowed member is not parsed by zipfile.
_CD_BYTES_PER_MEMBER = 1024
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_ISSUES_PER_KIND = 10  # a bomb repeats its findings thousands of times; keep a few
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
# Zip containers that are documents, not archives someone packed: not followed.
_DOCUMENT_RE = re.compile(
    r"\.(?:docx|docm|dotx|xlsx|xlsm|xltx|pptx|pptm|potx|odt|ods|odp|odg|epub|jar|apk|xpi|"
    r"vsdx|3mf|kmz|whl|nupkg)$",
    re.IGNORECASE,
)


class IssueKind(StrEnum):
    BOMB = "bomb"  # declares far more than it holds: never unpacked
    LIMIT = "limit"  # depth, member, archive or byte limit reached; the rest unseen
    ENCRYPTED = "encrypted"  # members are encrypted: names seen, content unseen
    CORRUPT = "corrupt"  # not a readable zip


@dataclass(frozen=True, slots=True)
class ArchiveIssue:
    kind: IssueKind
    path: str  # "mail.zip/inner.zip"
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_depth: int = 3  # nested archives followed below the attachment itself
    max_members: int = 1000  # members listed per archive
    max_bytes: int = 50 * 1024 * 1024  # uncompressed octets read from nested archives
    max_archives: int = 100  # archives opened in all, the attachment included


@dataclass(slots=True)
class ArchiveReport:
    names: list[str] = field(default_factory=list)  # member paths, "a.zip/b.zip/c.exe"
    issues: list[ArchiveIssue] = field(default_factory=list)
    archives: int = 0  # archives opened
    bytes_read: int = 0  # uncompressed octets of nested archives read

    def issue(self, kind: IssueKind, path: str, detail: str) -> None:
        if sum(1 for issue in self.issues if issue.kind is kind) < _ISSUES_PER_KIND:
            self.issues.append(ArchiveIssue(kind, path, detail))

    def kinds(self) -> set[IssueKind]:
        return {issue.kind for issue in self.issues}


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_MAGIC


def inspect_zip(data: bytes, name: str = "", limits: ArchiveLimits | None = None) -> ArchiveReport:
    """List the member names of a zip and of the zips inside it, within `limits`."""
    limits = limits or ArchiveLimits()
    report = ArchiveReport()
    stack: list[tuple[bytes, str, int]] = [(data, name or "archive.zip", 0)]
    while stack:
        blob, path, depth = stack.pop()
        if report.archives >= limits.max_archives:
            report.issue(IssueKind.LIMIT, path, f"more than {limits.max_archives} archives")
            break
        report.archives += 1
        try:
            nested = _inspect_one(blob, path, depth, limits, report)
        except Exception as exc:  # zipfile raises many kinds on hostile input
            report.issue(IssueKind.CORRUPT, path, f"{type(exc).__name__}: {exc}"[:160])
            continue
        stack.extend(reversed(nested))
    return report


def _inspect_one(
    blob: bytes, path: str, depth: int, limits: ArchiveLimits, report: ArchiveReport
) -> list[tuple[bytes, str, int]]:
    declared = _directory_size(blob)
    if declared is not None:
        entries, cd_size = declared
        if entries > limits.max_members or cd_size > limits.max_members * _CD_BYTES_PER_MEMBER:
            # Parsing a huge directory costs seconds: list the first members by hand.
            report.issue(IssueKind.LIMIT, path, f"{entries} members, more than "
                         f"{limits.max_members} listed")
            _list_central_directory(blob, path, limits.max_members, report)
            return []
    nested: list[tuple[bytes, str, int]] = []
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            report.issue(IssueKind.LIMIT, path, f"{len(infos)} members, more than "
                         f"{limits.max_members} listed")
            infos = infos[: limits.max_members]
        total = sum(info.file_size for info in infos)
        if total > limits.max_bytes and total > BOMB_RATIO * max(len(blob), 1):
            report.issue(IssueKind.BOMB, path, f"declares {total} octets in {len(blob)}")
            report.names.extend(f"{path}/{info.filename}" for info in infos)
            return []
        encrypted = False
        for info in infos:
            member = f"{path}/{info.filename}"
            report.names.append(member)
            if info.flag_bits & _FLAG_ENCRYPTED:
                encrypted = True
                continue
            if info.is_dir() or not _maybe_archive(archive, info):
                continue
            if depth + 1 > limits.max_depth:
                report.issue(IssueKind.LIMIT, member, f"nested deeper than {limits.max_depth}")
                continue
            left = limits.max_bytes - report.bytes_read
            if info.file_size > left:
                ratio = info.file_size / max(info.compress_size, 1)
                kind = IssueKind.BOMB if ratio > BOMB_RATIO else IssueKind.LIMIT
                report.issue(kind, member, f"{info.file_size} octets, budget left {left}")
                continue
            try:
                with archive.open(info) as handle:
                    inner = handle.read(info.file_size)
            except Exception as exc:
                report.issue(IssueKind.CORRUPT, member, f"{type(exc).__name__}: {exc}"[:160])
                continue
            report.bytes_read += len(inner)
            if is_zip(inner):
                nested.append((inner, member, depth + 1))
        if encrypted:
            report.issue(IssueKind.ENCRYPTED, path, "encrypted members")
    return nested


def _maybe_archive(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """A member worth opening: named .zip, or (documents aside) starting like one."""
    if info.filename.lower().endswith(".zip"):
        return True
    if info.file_size < 22 or _DOCUMENT_RE.search(info.filename):
        return False
    try:
        with archive.open(info) as handle:
            return is_zip(handle.read(4))
    except Exception:  # unreadable members are judged when (if) they are opened
        return False


def _directory_size(blob: bytes) -> tuple[int, int] | None:
    """(entries, central directory octets) from the end record, or None if not found."""
    start = blob.rfind(_EOCD, max(0, len(blob) - 65557))
    if start < 0 or len(blob) < start + 22:
        return None
    entries, cd_size = struct.unpack_from("<HI", blob, start + 10)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        start64 = blob.rfind(_EOCD64, max(0, start - 4096), start)
        if start64 < 0 or len(blob) < start64 + 56:
            return None
        entries, cd_size = struct.unpack_from("<QQ", blob, start64 + 32)
    return entries, cd_size


def _list_central_directory(blob: bytes, path: str, limit: int, report: ArchiveReport) -> None:
    """The first `limit` member names, read straight from the central directory."""
    pos = blob.find(_CENTRAL)
    encrypted = False
    count = 0
    while pos >= 0 and count < limit and len(blob) >= pos + 46:
        if blob[pos : pos + 4] != _CENTRAL:
            break
        flags = struct.unpack_from("<H", blob, pos + 8)[0]
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, pos + 28)
        raw = blob[pos + 46 : pos + 46 + name_len]
        name = raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        report.names.append(f"{path}/{name}")
        encrypted = encrypted or bool(flags & _FLAG_ENCRYPTED)
        pos += 46 + name_len + extra_len + comment_len
        count += 1
    if encrypted:
        report.issue(IssueKind.ENCRYPTED, path, "encrypted members")
