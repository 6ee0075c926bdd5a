"""The health gate's probe message: how the proxy knows it, and the secret that proves it.

After a restart the gate sends one message from loopback through the inbound listener:
the connect, HELO, MAIL and RCPT checks run, RCPT is relayed in-line to Postfix (so
Postfix must accept the recipient), the message is received, every DATA check judges it
and the action is decided, exactly as for real mail. Then, instead of sending the data to
Postfix, the proxy resets the Postfix transaction (RSET: nothing is queued) and answers
`250 2.0.0 Health check passed (action=... score=...), not delivered`.

Only a message from a loopback address whose header `X-Postwall-Health-Check` carries
the token of `data_dir/run/health-token` is treated so: the file is created by the
proxy's start-up check (mode 0600, the service user's), so only root and that user can
read it, and a message from outside can never be swallowed by copying the header.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path

HEADER = "X-Postwall-Health-Check"
TOKEN_NAME = "health-token"  # noqa: S105 - a file name, not a secret
_HEADER_RE = re.compile(rb"^X-Postwall-Health-Check:[ \t]*([A-Za-z0-9_-]{16,128})[ \t]*\r?$",
                        re.IGNORECASE | re.MULTILINE)


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / TOKEN_NAME


def read_token(data_dir: Path) -> str | None:
    try:
        token = token_path(data_dir).read_text().strip()
    except OSError:
        return None
    return token or None


def ensure_token(data_dir: Path) -> str:
    """The token, created (owner-only) if there is none yet."""
    token = read_token(data_dir)
    if token is not None:
        return token
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    try:
        os.link(tmp, path)  # never replace a token another worker just made
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_token(data_dir) or token


def is_probe(content: bytes | None, peer_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             token: str | None) -> bool:
    if token is None or content is None or not peer_ip.is_loopback:
        return False
    head = content.split(b"\r\n\r\n", 1)[0]
    match = _HEADER_RE.search(head)
    return match is not None and hmac.compare_digest(match.group(1), token.encode())
