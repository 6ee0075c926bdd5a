"""What a command mail carries: forwarded messages and address lines (pure).

Forwarded messages are attachments (message/rfc822, or a .eml file) or an inline forward
("---------- Forwarded message ---------", "-----Original Message-----", "Begin
forwarded message:") whose header lines become the headers of the message learned.
Address lines are the lines of the command mail's own text (not of attachments) up to a
signature separator; quoted lines ("> ...") are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from appliance import mime

MAX_TEXT = 200_000
_INLINE_MARKERS = re.compile(
    r"^(?:-{3,}\s*(?:Forwarded message|Original Message|Forwarded Message)\s*-{3,}"
    r"|Begin forwarded message:)\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z-]{0,40}):\s?(.*)$")
_LINE_VALUE = re.compile(r"^[^\s]+$")


@dataclass
class AddressLines:
    values: list[str] = field(default_factory=list)
    malformed: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, why)


def _serialise(msg: Message) -> bytes:
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(msg)
    return buffer.getvalue().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def forwarded_messages(msg: Message, max_parts: int = 100) -> list[bytes]:
    found: list[bytes] = []
    for info in mime.iter_parts(msg, 10, max_parts):
        if info.depth == 0:
            continue
        if info.content_type == "message/rfc822":
            payload = info.part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found.append(_serialise(payload[0]))
            else:
                data = mime.attachment_payload(info.part)
                if data.strip():
                    found.append(data)
        elif (info.filename or "").lower().endswith(".eml") and not info.is_multipart:
            data = mime.attachment_payload(info.part)
            if data.strip():
                found.append(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    # Parts inside an attached message are that message's own, not more forwards.
    if found:
        return found
    inline = inline_forward(own_text(msg))
    return [inline] if inline is not None else []


def inline_forward(text: str) -> bytes | None:
    """The message below an inline-forward marker, rebuilt from its header lines."""
    match = _INLINE_MARKERS.search(text)
    if match is None:
        return None
    lines = text[match.end():].lstrip("\r\n").splitlines()
    headers: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        header = _HEADER_LINE.match(line)
        if not line:
            index += 1
            break
        if header is None:
            break
        headers.append(f"{header.group(1)}: {header.group(2)}")
        index += 1
    body = "\r\n".join(lines[index:]).strip()
    if not body and not headers:
        return None
    head = "\r\n".join(headers)
    return f"{head}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()


def own_text(msg: Message) -> str:
    """The first text part of the command mail itself (never of an attached message)."""
    stack = [msg]
    while stack:
        part = stack.pop(0)
        try:
            content_type = part.get_content_type()
        except Exception:
            content_type = "text/plain"
        if content_type == "message/rfc822":
            continue
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack = [p for p in payload if isinstance(p, Message)] + stack
            continue
        if part.get_filename() is not None:
            continue
        if content_type in ("text/plain", "text/html"):
            return mime.part_text(part, MAX_TEXT)
    return ""


def address_lines(text: str, max_lines: int) -> AddressLines:
    """Addresses, one per line; the rest of a line after whitespace is a comment only if
    it starts with '#'. Everything else that is not empty is reported as malformed."""
    result = AddressLines()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if raw.rstrip() == "--" or line.lower().startswith("-- "):
            break  # signature
        if not line or line.startswith(">") or line.startswith("#"):
            continue
        value = line.split("#", 1)[0].strip() if " #" in line else line
        if not _LINE_VALUE.match(value):
            result.malformed.append((number, line[:100], "one address per line, no spaces"))
            continue
        if len(result.values) >= max_lines:
            result.malformed.append((number, line[:100], f"more than {max_lines} addresses"))
            break
        result.values.append(value)
    return result


def sender_of(content: bytes) -> str:
    """The From address of a forwarded message ("" if none)."""
    headers = mime.parse_headers(content)
    value = mime.decoded_header(headers, "From")
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>", value) or re.search(r"([^<>\s]+@[^<>\s]+)", value)
    return match.group(1).lower() if match else ""
