"""Attachment blocking by file-name extension level (ASSP BlockExes), also inside zips,
plus the MIME structure limits (too deep, too many parts)."""

from __future__ import annotations

import re
import unicodedata
from typing import ClassVar

from appliance import mime
from appliance.config.schema import AttachmentSettings
from appliance.context import TransactionContext
from appliance.filters.archives import ArchiveLimits, IssueKind, inspect_zip, is_zip
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Reply, Stage, Symbol, SymbolSpec, Verdict

ARCHIVE_SYMBOLS = {
    IssueKind.BOMB: "ARCHIVE_BOMB",
    IssueKind.LIMIT: "ARCHIVE_LIMIT",
    IssueKind.ENCRYPTED: "ARCHIVE_ENCRYPTED",
    IssueKind.CORRUPT: "ARCHIVE_CORRUPT",
}
_ARCHIVE_NAME_RE = re.compile(r"\.zip$", re.IGNORECASE)
_ARCHIVE_TYPES = frozenset({"application/zip", "application/x-zip-compressed",
                            "application/x-zip"})
_SHOWN_RE = re.compile(r"[^\x20-\x7e]")


def extension_pattern(settings: AttachmentSettings) -> re.Pattern[str] | None:
    """`\\.(?:L1|L2...)$` for the configured level, or None at level 0."""
    levels = (settings.bad_attach_l1, settings.bad_attach_l2, settings.bad_attach_l3)
    chosen = [f"(?:{alternation})" for alternation in levels[: settings.level] if alternation]
    if not chosen:
        return None
    return re.compile(rf"\.(?:{'|'.join(chosen)})$", re.IGNORECASE)


def candidate_names(filename: str) -> list[str]:
    """The names a system might act on: trailing dots and spaces dropped (Windows does),
    invisible format characters (bidi overrides, zero widths) removed, and the part
    before a NUL (C code stops there)."""
    names = []
    for raw in dict.fromkeys((filename.split("\x00")[0], filename.replace("\x00", ""))):
        name = "".join(ch for ch in raw if unicodedata.category(ch) not in ("Cf", "Cc"))
        name = name.rstrip(". \t")
        if name:
            names.append(name)
    return names


def shown(name: str, limit: int = 80) -> str:
    """A file name or archive path safe for an SMTP reply line (printable ASCII,
    bounded; a long path keeps its first and last components)."""
    text = _SHOWN_RE.sub("?", name)
    if len(text) <= limit:
        return text
    first, _, rest = text.partition("/")
    if "/" in rest:
        short = f"{first}/.../{rest.rpartition('/')[2]}"
        if len(short) <= limit:
            return short
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


class AttachmentFilter(Filter):
    name: ClassVar[str] = "attachments"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BAD_ATTACHMENT", 10.0, "Attachment with a blocked extension", "attachment"),
        SymbolSpec("ARCHIVE_BOMB", 6.0, "Archive declares far more data than it holds",
                   "attachment"),
        SymbolSpec("ARCHIVE_LIMIT", 1.0, "Archive too deep or too large to inspect fully",
                   "attachment"),
        SymbolSpec("ARCHIVE_ENCRYPTED", 2.0, "Encrypted archive: contents cannot be checked",
                   "attachment"),
        SymbolSpec("ARCHIVE_CORRUPT", 1.0, "Attachment looks like a zip but cannot be read",
                   "attachment"),
        SymbolSpec("MIME_TOO_DEEP", 3.0, "MIME parts nested deeper than max_mime_depth", "mime"),
        SymbolSpec("MIME_TOO_MANY_PARTS", 2.0, "More MIME parts than max_mime_parts", "mime"),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, AttachmentSettings)
        self.cfg = settings
        self.pattern = extension_pattern(settings)
        self.limits = ArchiveLimits(
            max_depth=settings.max_archive_depth,
            max_members=settings.max_archive_members,
            max_bytes=settings.max_archive_bytes,
            max_archives=settings.max_archives,
        )

    def blocked(self, filename: str) -> str | None:
        """The offending name when `filename` has a blocked extension."""
        if self.pattern is None:
            return None
        for name in candidate_names(filename):
            if self.pattern.search(name):
                return name
        return None

    async def check(self, ctx: TransactionContext) -> Verdict:
        found: dict[str, Symbol] = {}  # one symbol per symbol name, the first reason kept
        bad: str | None = None
        for info in mime.iter_parts(ctx.message, self.cfg.max_mime_depth,
                                    self.cfg.max_mime_parts):
            if info.limit_exceeded is mime.Limit.DEPTH and "MIME_TOO_DEEP" not in found:
                found["MIME_TOO_DEEP"] = self.hit(
                    "MIME_TOO_DEEP", f"nested deeper than {self.cfg.max_mime_depth}")
            elif info.limit_exceeded is mime.Limit.PARTS:
                found["MIME_TOO_MANY_PARTS"] = self.hit(
                    "MIME_TOO_MANY_PARTS", f"more than {self.cfg.max_mime_parts} parts")
            if info.is_multipart:
                continue
            names = [info.filename] if info.filename else []
            if self.cfg.scan_archives and self._is_archive(info):
                names.extend(self._archive_names(info, found))
            for name in names:
                hit = self.blocked(name)
                if hit is not None and bad is None:
                    bad = hit
        if bad is not None:
            reply = Reply(554, "5.7.1", f"Attachment type not allowed: {shown(bad)}")
            return Verdict(
                symbols=tuple(found.values()),
                final=self.reject("BAD_ATTACHMENT", shown(bad, 150), reply).final,
            )
        return self.found(*found.values()) if found else NO_FINDINGS

    def _is_archive(self, info: mime.PartInfo) -> bool:
        if info.content_type in _ARCHIVE_TYPES:
            return True
        if info.filename and _ARCHIVE_NAME_RE.search(info.filename.rstrip(". ")):
            return True
        if info.content_type.startswith(("text/", "image/", "audio/", "video/")):
            return False
        return is_zip(mime.attachment_payload(info.part, 4))

    def _archive_names(self, info: mime.PartInfo, found: dict[str, Symbol]) -> list[str]:
        data = mime.attachment_payload(info.part)
        if not is_zip(data):
            if info.filename and _ARCHIVE_NAME_RE.search(info.filename.rstrip(". ")):
                found.setdefault("ARCHIVE_CORRUPT", self.hit(
                    "ARCHIVE_CORRUPT", f"{shown(info.filename)}: not a zip"))
            return []
        report = inspect_zip(data, info.filename or "attachment.zip", self.limits)
        for issue in report.issues:
            symbol = ARCHIVE_SYMBOLS[issue.kind]
            found.setdefault(symbol, self.hit(symbol, f"{shown(issue.path, 120)}: {issue.detail}"))
        return report.names
