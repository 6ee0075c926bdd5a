"""Signed, expiring one-click links of the block-report digests (pure but for the key).

A link token is ``<payload>.<signature>``: the payload is compact JSON (action, message
id, recipient, expiry, nonce) in base64url, the signature HMAC-SHA256 over it with the
appliance's link key. The key is 32 random bytes in ``<data_dir>/blockreport.key``,
created on first use with mode 0600 and refused if others can read it. A token is
checked for form, signature (in constant time) and expiry here; that it is used only
once is the storage's `UsedLinkStore` (one use per message and recipient).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "blockreport.key"
KEY_BYTES = 32
ACTIONS = ("release", "release_whitelist")
MAX_TOKEN = 2048
_CONTEXT = b"postwall-link-v1."


class LinkError(ValueError):
    """The link cannot be used; the message is fit to show the user. This class itself
    means the token is not one we signed (malformed or forged)."""


class LinkExpired(LinkError):
    """Correctly signed, but past its expiry."""


class LinkUsed(LinkError):
    """Correctly signed, but this message was released through a link before."""


class LinkKeyError(LinkError):
    """The appliance's link key is unusable (a fault of the installation, not the link)."""


def load_key(data_dir: Path) -> bytes:
    """The link key, created (0600, owner only) on first use."""
    path = Path(data_dir) / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise LinkKeyError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise LinkKeyError(f"{path} is readable by others (mode {info.st_mode & 0o777:o}); "
                           "chmod 600 it")
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise LinkKeyError(f"{path} is too short to be a link key")
    return key


@dataclass(frozen=True, slots=True)
class LinkClaims:
    action: str
    txid: str
    recipient: str
    expires: int  # Unix time
    nonce: str

    @property
    def link_id(self) -> str:
        """One use per message and recipient, whichever of its links is clicked."""
        return hashlib.sha256(f"{self.txid}\0{self.recipient}".encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest())


def sign(key: bytes, action: str, txid: str, recipient: str, lifetime: float,
         now: float | None = None) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown link action {action!r}")
    claims = {"a": action, "t": txid, "r": recipient.lower(),
              "e": int((now if now is not None else time.time()) + lifetime),
              "n": secrets.token_hex(8)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_signature(key, payload)}"


def verify(key: bytes, token: str, now: float | None = None) -> LinkClaims:
    """The claims of a valid, unexpired token; LinkError says why not."""
    claims = _signed_claims(key, token)
    if (now if now is not None else time.time()) >= claims.expires:
        raise LinkExpired("this link has expired; use a newer block report")
    return claims


def signed_claims(key: bytes, token: str) -> LinkClaims | None:
    """The claims of a token we signed, expired or not; None for any other token. For
    saying in the audit log which message a refused link was about."""
    try:
        return _signed_claims(key, token)
    except LinkError:
        return None


def _signed_claims(key: bytes, token: str) -> LinkClaims:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or not token.isascii():
        raise LinkError("this link is not valid")
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise LinkError("this link is not valid")
    if not hmac.compare_digest(_signature(key, payload), signature):
        raise LinkError("this link is not valid (its signature does not match)")
    try:
        data = json.loads(_unb64(payload))
        claims = LinkClaims(str(data["a"]), str(data["t"]), str(data["r"]), int(data["e"]),
                            str(data["n"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise LinkError("this link is not valid") from None
    if claims.action not in ACTIONS:
        raise LinkError("this link is not valid")
    return claims
