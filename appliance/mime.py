"""Tolerant MIME helpers for the data-stage filters.

Mail from the internet is often broken and sometimes hostile: unterminated boundaries,
NUL bytes, 8-bit junk in headers, invalid charsets, absurd nesting. Nothing here raises
on such input; defects are recorded by the parser and the helpers degrade to something
useful. Walks use explicit stacks, never recursion, and every walk and decode is bounded.
"""

from __future__ import annotations

import binascii
import codecs
import email.policy
import html
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.errors import MessageDefect
from email.message import Message
from email.parser import BytesParser
from enum import StrEnum

log = logging.getLogger("postwall.mime")

# Containers the feed parser descends into (each level costs it a Python frame).
_CONTAINER_RE = re.compile(rb"(?im)^(content-type:\s*)(multipart|message)(\s*/)")
# On a RecursionError the message is re-parsed with containers past this many demoted
# to leaves, so the tree stays well inside the interpreter's recursion limit.
PARSE_MAX_CONTAINERS = 100
_DEMOTED_TYPE = b"application/x-postwall-too-deep; x="


class NestingTooDeepDefect(MessageDefect):
    """The message nests deeper than the parser can follow; inner parts were not parsed."""


class Limit(StrEnum):
    DEPTH = "depth"
    PARTS = "parts"


@dataclass(frozen=True, slots=True)
class PartInfo:
    part: Message
    depth: int  # 0 is the message itself
    content_type: str  # lower case, "text/plain" when missing or invalid
    filename: str | None  # decoded (RFC 2047 and RFC 2231), control characters removed
    is_multipart: bool
    # Set on the part where a walk stopped: its children were skipped (DEPTH) or the walk
    # ended after it with parts left over (PARTS).
    limit_exceeded: Limit | None = None


# --- parsing -------------------------------------------------------------------------


def parse(content: bytes) -> Message:
    """Parse octets into a compat32 `Message`; never raises (defects are recorded).

    The standard feed parser spends a Python frame per nesting level, so a message nested
    about a thousand deep raises RecursionError (after ~0.3 s: that depth is the bound).
    It is then parsed again with the containers past PARSE_MAX_CONTAINERS demoted to
    leaves, and marked with a `NestingTooDeepDefect` that `iter_parts` reports as DEPTH.
    """
    parser = BytesParser(policy=email.policy.compat32)
    try:
        return parser.parsebytes(content)
    except RecursionError:
        log.info("MIME nesting too deep for the parser; inner containers left unparsed")
    except Exception:  # the feed parser is tolerant; this is a last line of defence
        log.warning("MIME parser failed; falling back to headers only", exc_info=True)
        return _headers_only(parser, content)
    count = 0

    def demote(match: re.Match[bytes]) -> bytes:
        nonlocal count
        count += 1
        if count <= PARSE_MAX_CONTAINERS:
            return match.group(0)
        return match.group(1) + _DEMOTED_TYPE + match.group(2) + match.group(3)

    try:
        msg = parser.parsebytes(_CONTAINER_RE.sub(demote, content))
    except Exception:  # RecursionError included: nesting we could not see in the headers
        msg = _headers_only(parser, content)
    msg.defects.append(NestingTooDeepDefect("nesting too deep, inner parts not parsed"))
    return msg


def parse_headers(content: bytes) -> Message:
    """Only the header block, for cheap lookups (the log's Subject) on the hot path."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 4]
    try:
        return BytesParser(policy=email.policy.compat32).parsebytes(head, headersonly=True)
    except Exception:  # a header block we cannot parse has no subject worth logging
        return Message()


def _headers_only(parser: BytesParser, content: bytes) -> Message:
    try:
        msg = parser.parsebytes(content, headersonly=True)
    except Exception:
        msg = Message()
    msg.defects.append(NestingTooDeepDefect("message body could not be parsed"))
    return msg


def too_deep(msg: Message) -> bool:
    """True when `parse` had to give up on part of the structure."""
    return any(isinstance(defect, NestingTooDeepDefect) for defect in msg.defects)


# --- headers -------------------------------------------------------------------------

_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS_RE = re.compile(r"(\?=)[ \t]+(?==\?[^?\s]{1,75}\?[bBqQ]\?)")
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _codec(charset: str) -> str:
    """A text codec name for a MIME charset; utf-8 when unknown or not a text codec."""
    name = charset.partition("*")[0].strip().strip('"').lower()  # RFC 2231 language tag
    if name in ("", "unknown-8bit", "x-unknown", "us-ascii", "ascii"):
        return "utf-8"  # utf-8 is a superset of ascii and the usual truth of "unknown"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True):
        return "utf-8"  # base64_codec, zlib_codec, rot13 ... are not charsets
    return info.name


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Bytes to text: the declared charset, else UTF-8, else Windows-1252; never raises."""
    if charset:
        try:
            return data.decode(_codec(charset), errors="replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _raw_to_text(raw: str) -> str:
    """A raw header value (8-bit octets carried as surrogate escapes) as text."""
    try:
        data = raw.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return raw  # already text
    if data.isascii():
        return raw
    return decode_bytes(data)


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    try:
        if encoding in "bB":
            cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
            cleaned += "=" * (-len(cleaned) % 4)
            if len(cleaned) % 4 == 1:
                cleaned = cleaned[:-1]  # a dangling sextet cannot be decoded
            data = binascii.a2b_base64(cleaned)
        else:
            data = binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return None
    return decode_bytes(data, charset)


def decode_header_value(raw: str) -> str:
    """Unfold and decode one raw header value (RFC 2047), tolerantly."""
    text = _FOLD_RE.sub("", _raw_to_text(raw))
    if "=?" in text:
        text = _BETWEEN_WORDS_RE.sub(r"\1", text)  # whitespace between encoded words goes

        def word(match: re.Match[str]) -> str:
            decoded = _decode_word(match.group(1), match.group(2), match.group(3))
            return match.group(0) if decoded is None else decoded

        text = _ENCODED_WORD_RE.sub(word, text)
    return _CONTROL_RE.sub("", text).strip()


def decoded_headers(msg: Message, name: str) -> list[str]:
    """Every value of header `name`, decoded."""
    wanted = name.lower()
    try:
        raw = [value for key, value in msg.raw_items() if key.lower() == wanted]
    except Exception:
        return []
    return [decode_header_value(value if isinstance(value, str) else str(value)) for value in raw]


def decoded_header(msg: Message, name: str) -> str:
    """The first value of header `name`, decoded; "" when absent. Never raises."""
    values = decoded_headers(msg, name)
    return values[0] if values else ""


def headers_text(msg: Message, max_bytes: int) -> str:
    """The decoded header block as "Name: value" lines, at most `max_bytes` characters."""
    lines: list[str] = []
    size = 0
    for key, value in msg.raw_items():
        line = f"{key}: {decode_header_value(value if isinstance(value, str) else str(value))}"
        lines.append(line)
        size += len(line) + 1
        if size >= max_bytes:
            break
    return "\n".join(lines)[:max_bytes]


# --- parts ---------------------------------------------------------------------------


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def part_filename(part: Message) -> str | None:
    """The attachment name: Content-Disposition filename, else Content-Type name, with
    RFC 2231 and (non-standard but common) RFC 2047 encoding decoded."""
    try:
        name = part.get_filename()
    except Exception:
        return None
    if name is None:
        return None
    # A NUL is kept (as the only control character): software that stops reading at it
    # sees a different name, and the attachment check looks at both.
    pieces = str(name).split("\x00")
    return "\x00".join(decode_header_value(piece) for piece in pieces)


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [child for child in payload if isinstance(child, Message)]
    return []


def iter_parts(msg: Message, max_depth: int, max_parts: int) -> Iterator[PartInfo]:
    """Every part in document order (the message first), with an explicit stack.

    A container at `max_depth` is reported with `limit_exceeded=DEPTH` and not entered;
    after `max_parts` parts the walk stops, the last one flagged `PARTS` if any were left.
    A message `parse` could not follow completely is flagged DEPTH on the message itself.
    """
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        children = _children(part)
        limit: Limit | None = None
        if (depth == 0 and too_deep(part)) or (children and depth >= max_depth):
            limit = Limit.DEPTH
            children = [] if depth >= max_depth else children
        seen += 1
        if seen >= max_parts and (stack or children):
            limit = Limit.PARTS
            children = []
            stack.clear()
        stack.extend((child, depth + 1) for child in reversed(children))
        yield PartInfo(
            part=part,
            depth=depth,
            content_type=_content_type(part),
            filename=part_filename(part),
            is_multipart=part.is_multipart(),
            limit_exceeded=limit,
        )


# --- payloads ------------------------------------------------------------------------

_B64_JUNK_RE = re.compile(rb"[^A-Za-z0-9+/]")


def attachment_payload(part: Message, max_bytes: int | None = None) -> bytes:
    """The decoded payload of a leaf part (base64, quoted-printable, else as sent).

    With `max_bytes` only about that many decoded octets are produced, so a huge part
    costs no more than its prefix. Broken encodings decode as far as they can."""
    # The stored payload, not get_payload(): that re-decodes 8-bit text by the declared
    # charset, and the exact octets are wanted here.
    payload = getattr(part, "_payload", None)
    if payload is None or isinstance(payload, list):
        return b""
    if isinstance(payload, bytes):
        raw = payload
    elif isinstance(payload, str):
        try:
            raw = payload.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # set from text in code rather than parsed
            raw = payload.encode("utf-8", "surrogateescape")
    else:
        return b""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        if max_bytes is not None:
            # about 4/3 encoded per decoded octet, plus line ends and some junk
            raw = raw[: max_bytes * 2 + 16]
        cleaned = _B64_JUNK_RE.sub(b"", raw.partition(b"=")[0])
        rest = len(cleaned) % 4
        if rest == 1:
            cleaned = cleaned[:-1]  # a dangling sextet cannot be decoded
        elif rest:
            cleaned += b"=" * (4 - rest)
        try:
            data = binascii.a2b_base64(cleaned)
        except binascii.Error:
            data = b""
    elif cte == "quoted-printable":
        if max_bytes is not None:
            raw = raw[: max_bytes * 3 + 16]
        try:
            data = binascii.a2b_qp(raw)
        except (binascii.Error, ValueError):
            data = raw
    elif cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        try:
            decoded = part.get_payload(decode=True)
        except Exception:
            decoded = None
        data = decoded if isinstance(decoded, bytes) else raw
    else:
        data = raw
    return data if max_bytes is None else data[:max_bytes]


# --- text ----------------------------------------------------------------------------

_TAG_RE = re.compile(r"<[^<>]*>")
_SPACE_RE = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES_RE = re.compile(r"\n\s*\n+")


def _drop_block(text: str, lower: str, tag: str) -> tuple[str, str]:
    """Remove <tag ...>...</tag> blocks in one linear pass (no backtracking regex)."""
    opening, closing = f"<{tag}", f"</{tag}"
    if opening not in lower:
        return text, lower
    out: list[str] = []
    pos = 0
    while True:
        start = lower.find(opening, pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = lower.find(closing, start)
        if end < 0:
            break  # unterminated: the rest is script, not text
        close = lower.find(">", end)
        pos = len(text) if close < 0 else close + 1
    result = " ".join(out)
    return result, result.lower()


def strip_html(source: str) -> str:
    """Visible text of HTML, cheaply: no DOM, linear time, good enough for matching."""
    lower = source.lower()
    for tag in ("script", "style"):
        source, lower = _drop_block(source, lower, tag)
    text = _TAG_RE.sub(" ", source)
    text = html.unescape(text)
    text = _SPACE_RE.sub(" ", text)
    return _BLANK_LINES_RE.sub("\n", text)


def part_text(part: Message, max_bytes: int) -> str:
    """Decoded text of one text part (HTML stripped), about `max_bytes` characters."""
    content_type = _content_type(part)
    # HTML shrinks a lot when stripped, so read more of it
    budget = max_bytes * 4 if content_type == "text/html" else max_bytes
    data = attachment_payload(part, budget)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    text = decode_bytes(data, charset).replace("\x00", "")
    if content_type == "text/html":
        text = strip_html(text)
    return text[:max_bytes]


def text_content(
    msg: Message, max_bytes: int, max_depth: int = 50, max_parts: int = 1000
) -> str:
    """The decoded text/plain and text/html parts joined, at most `max_bytes` characters."""
    chunks: list[str] = []
    left = max_bytes
    for info in iter_parts(msg, max_depth, max_parts):
        if info.content_type not in ("text/plain", "text/html") or info.is_multipart:
            continue
        text = part_text(info.part, left)
        if not text:
            continue
        chunks.append(text)
        left -= len(text) + 1
        if left <= 0:
            break
    return "\n".join(chunks)[:max_bytes]
