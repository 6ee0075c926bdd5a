"""A kept message made safe to look at: headers, text parts, HTML turned into plain text,
attachments listed by name. Nothing of the message is ever rendered as HTML; templates
escape all of it, and the Content-Security-Policy forbids scripts, frames and remote
images besides."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from html.parser import HTMLParser

MAX_TEXT_CHARS = 200_000
MAX_PARTS = 200
_BLOCK_TAGS = frozenset({
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
    "pre", "hr", "section", "article", "header", "footer", "ul", "ol",
})
_SKIPPED_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})


@dataclass
class Part:
    content_type: str
    text: str | None = None  # for text parts (HTML already converted)
    filename: str | None = None
    size: int = 0
    converted_from_html: bool = False
    truncated: bool = False


@dataclass
class SafeMessage:
    headers: list[tuple[str, str]]
    subject: str
    sender: str
    to: str
    date: str
    parts: list[Part] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def attachments(self) -> list[Part]:
        return [p for p in self.parts if p.text is None]

    @property
    def texts(self) -> list[Part]:
        return [p for p in self.parts if p.text is not None]


class _TextExtractor(HTMLParser):
    """HTML -> readable text; links are kept as "text [url]" so a phish shows its target."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")
        if tag == "a":
            self._href.append(dict(attrs).get("href"))
        if tag == "img":
            alt = dict(attrs).get("alt")
            self.out.append(f"[image{': ' + alt if alt else ''}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")
        if tag == "a" and self._href:
            href = self._href.pop()
            if href:
                self.out.append(f" [{href}]")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.out).splitlines()]
        text = "\n".join(lines)
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        return text.strip()


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # a hostile document must not break the page
        return html
    return parser.text()


def _header(message: Message, name: str) -> str:
    try:
        return str(message.get(name, "") or "")
    except Exception:
        raw = message.get_all(name) or [""]
        return str(raw[0])


def parse(content: bytes) -> SafeMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    headers = [(name, _decoded(message, name, value)) for name, value in message.raw_items()]
    safe = SafeMessage(
        headers=headers,
        subject=_header(message, "Subject"),
        sender=_header(message, "From"),
        to=_header(message, "To"),
        date=_header(message, "Date"),
    )
    parts = list(message.walk()) if message.is_multipart() else [message]
    if len(parts) > MAX_PARTS:
        safe.problems.append(f"{len(parts)} MIME parts; only the first {MAX_PARTS} are shown")
        parts = parts[:MAX_PARTS]
    for part in parts:
        if part.is_multipart():
            continue
        safe.parts.append(_part(part, safe))
    for defect in getattr(message, "defects", [])[:5]:
        safe.problems.append(f"malformed message: {type(defect).__name__}")
    return safe


def _decoded(message: Message, name: str, raw: str) -> str:
    try:
        return str(message.policy.header_fetch_parse(name, raw))  # type: ignore[attr-defined]
    except Exception:  # a malformed header is shown as it came
        return str(raw)


def _part(part: Message, safe: SafeMessage) -> Part:
    content_type = part.get_content_type()
    filename = None
    try:
        filename = part.get_filename()
    except Exception:
        filename = "(undecodable name)"
    disposition = (part.get_content_disposition() or "").lower()
    raw = part.get_payload(decode=True) or b""
    if content_type in ("text/plain", "text/html") and disposition != "attachment":
        try:
            text = part.get_content() if isinstance(part, EmailMessage) else raw.decode()
        except Exception:
            text = raw.decode("utf-8", "replace")
            safe.problems.append(f"a {content_type} part has an unknown character set")
        converted = content_type == "text/html"
        if converted:
            text = html_to_text(str(text))
        text = str(text)
        truncated = len(text) > MAX_TEXT_CHARS
        return Part(content_type, text[:MAX_TEXT_CHARS], filename, len(raw), converted,
                    truncated)
    return Part(content_type, None, filename, len(raw))
