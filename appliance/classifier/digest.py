"""A message's identity for the training ledger: the same message forwarded, tagged or
relayed again has the same digest, so it is learned once and corrected, not doubled."""

from __future__ import annotations

import hashlib
import re
from email.message import Message

from appliance import mime
from appliance.actions import strip_own_headers

_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_TRAILING_SPACE_RE = re.compile(rb"[ \t]+(?=\r?\n)")
_IDENTITY_HEADERS = ("Message-ID", "From", "Date", "Subject")


def message_digest(
    content: bytes, subject_prefix: str = "", headers: Message | None = None
) -> str:
    """sha256 (hex) over the identifying headers (decoded, whitespace collapsed, our own
    subject tag removed) and the body with line ends and trailing blanks normalised.
    Trace and verdict headers (Received, X-Spam-*, ...) are not part of it. `headers`:
    `mime.parse_headers(content)`, when the caller has it already."""
    match = _HEADER_END_RE.search(content)
    body = content[match.end():] if match else b""
    if headers is None:
        headers = mime.parse_headers(content)
    digest = hashlib.sha256()
    for name in _IDENTITY_HEADERS:
        value = " ".join(mime.decoded_header(headers, name).split())
        if name == "Subject" and subject_prefix and value.startswith(subject_prefix):
            value = value[len(subject_prefix):].lstrip()
        digest.update(f"{name.lower()}:{value}\n".encode("utf-8", "surrogateescape"))
    body = _TRAILING_SPACE_RE.sub(b"", body).replace(b"\r\n", b"\n").rstrip(b"\n")
    digest.update(body)
    return digest.hexdigest()


def training_copy(content: bytes) -> bytes:
    """The octets kept in the corpus: without our verdict headers, which must not teach."""
    return strip_own_headers(content)
