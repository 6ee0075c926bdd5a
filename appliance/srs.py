"""The Sender Rewriting Scheme, "guarded" variant (Shevek, "Sender Rewriting Scheme",
2004; the scheme of libsrs2 and Mail::SRS).

Forwarding mail of user@orig.example keeps SPF passing at the next hop by sending it
from an address of ours that leads bounces back:

    SRS0=HHHH=TT=orig.example=user@srs.ours        (we are the first forwarder)
    SRS1=HHHH=fwd1.example==HHHH=TT=orig.example=user@srs.ours   (re-forwarding an SRS0
                                                    address of fwd1: bounces go to fwd1)

HHHH is the base64 HMAC-SHA1 of the rest, truncated; TT the day (modulo 1024) in a
base32 alphabet. Both compare without case, because some MTAs change the case of the
address they bounce to; the hash is made over the lower-cased data for the same reason.

Not the PyPI `srslib`: it checks a hash only as long as the one in the address (a
one-character hash passes with a chance of 1 in 32), has no clock-skew allowance and
one secret per process; this follows the paper with those fixed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import keyfile

DAY = 86400
TIMESTAMP_SLOTS = 1024  # two base32 characters
TIMESTAMP_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
CLOCK_SKEW_DAYS = 1  # a timestamp up to a day in the future (another forwarder's clock)
SEPARATORS = "=+-"

_SRS0_RE = re.compile(r"^SRS0[=+-]([^=]+)=([^=]+)=([^=]+)=(.+)$", re.IGNORECASE)
_SRS1_RE = re.compile(r"^SRS1[=+-]([^=]+)=([^=]+)=([=+-].+)$", re.IGNORECASE)
_SRS0_OPAQUE_RE = re.compile(r"^SRS0([=+-].+)$", re.IGNORECASE)
_LOOKS_SRS_RE = re.compile(r"^SRS[01][=+-]", re.IGNORECASE)


class SRSError(ValueError):
    """An SRS address we cannot reverse: malformed, forged, or expired."""


@dataclass(frozen=True, slots=True)
class Reversal:
    address: str  # where the bounce goes now
    kind: str  # "SRS0" or "SRS1"


def looks_like_srs(address: str) -> bool:
    return _LOOKS_SRS_RE.match(address.rpartition("@")[0]) is not None


def load_secrets(path: Path) -> list[bytes]:
    """The secrets of `path` (first signs, all verify), created on first use."""
    return [line.encode("ascii") for line in keyfile.load_or_create(path, keyfile.new_secret())]


class SRS:
    def __init__(
        self, secrets: list[bytes], domain: str, *, max_age_days: int = 21, hash_length: int = 4
    ) -> None:
        if not secrets:
            raise ValueError("SRS needs at least one secret")
        if not 4 <= hash_length <= 27:
            raise ValueError("hash_length must be 4..27 (base64 of 20 bytes)")
        self.secrets = secrets
        self.domain = domain.lower().rstrip(".")
        self.max_age_days = max_age_days
        self.hash_length = hash_length

    # -- forward -----------------------------------------------------------------------

    def forward(self, sender: str, now: float | None = None) -> str:
        """The rewritten envelope sender for forwarding mail from `sender`; `sender` as
        it is when it is the null sender or already an address of our SRS domain."""
        local, at, host = sender.rpartition("@")
        if not sender or not at or not local or not host:
            if sender:
                raise SRSError(f"not an address: {sender!r}")
            return sender
        if host.lower().rstrip(".") == self.domain:
            return sender
        match = _SRS1_RE.match(local)
        if match is not None:
            # We are a further hop: bounces still go straight to the first forwarder.
            first_hop, opaque = match.group(2), match.group(3)
            return self._srs1(first_hop, opaque)
        match = _SRS0_OPAQUE_RE.match(local)
        if match is not None:
            return self._srs1(host, match.group(1))
        stamp = timestamp(time.time() if now is None else now)
        digest = self._hash(self.secrets[0], stamp, host, local)
        return f"SRS0={digest}={stamp}={host}={local}@{self.domain}"

    def _srs1(self, first_hop: str, opaque: str) -> str:
        digest = self._hash(self.secrets[0], first_hop, opaque)
        return f"SRS1={digest}={first_hop}={opaque}@{self.domain}"

    # -- reverse -----------------------------------------------------------------------

    def reverse(self, address: str, now: float | None = None) -> Reversal:
        """Where a bounce to our SRS `address` goes; SRSError (with the reason) if it is
        malformed, its hash does not match or its timestamp is too old."""
        local, at, host = address.rpartition("@")
        if not at or host.lower().rstrip(".") != self.domain:
            raise SRSError(f"not an address of the SRS domain {self.domain}")
        match = _SRS1_RE.match(local)
        if match is not None:
            given, first_hop, opaque = match.groups()
            self._check_hash(given, first_hop, opaque)
            if not _SRS0_OPAQUE_RE.match("SRS0" + opaque) or "@" in first_hop:
                raise SRSError("malformed SRS1 address")
            return Reversal(f"SRS0{opaque}@{first_hop}", "SRS1")
        match = _SRS0_RE.match(local)
        if match is not None:
            given, stamp, orig_host, orig_local = match.groups()
            if "@" in orig_host or "@" in orig_local:
                raise SRSError("malformed SRS0 address")
            self._check_hash(given, stamp, orig_host, orig_local)
            self._check_timestamp(stamp, time.time() if now is None else now)
            return Reversal(f"{orig_local}@{orig_host}", "SRS0")
        raise SRSError("malformed SRS address (expected SRS0=HASH=TT=domain=user or SRS1=...)")

    def _hash(self, secret: bytes, *parts: str) -> str:
        data = "".join(parts).lower().encode("utf-8", "surrogateescape")
        mac = hmac.new(secret, data, hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")[: self.hash_length]

    def _check_hash(self, given: str, *parts: str) -> None:
        if len(given) != self.hash_length:
            raise SRSError(f"hash has {len(given)} characters, expected {self.hash_length}")
        wanted = given.lower().encode("ascii", "replace")
        for secret in self.secrets:
            if hmac.compare_digest(self._hash(secret, *parts).lower().encode("ascii"), wanted):
                return
        raise SRSError("hash does not match (forged, or made with a removed secret)")

    def _check_timestamp(self, stamp: str, now: float) -> None:
        then = decode_timestamp(stamp)
        today = int(now // DAY) % TIMESTAMP_SLOTS
        age = (today - then) % TIMESTAMP_SLOTS
        if age <= self.max_age_days:
            return
        if TIMESTAMP_SLOTS - age <= CLOCK_SKEW_DAYS:
            return  # made "tomorrow" by a clock a little ahead of ours
        raise SRSError(f"timestamp expired ({age} days old, at most {self.max_age_days})")


def timestamp(now: float) -> str:
    day = int(now // DAY) % TIMESTAMP_SLOTS
    return TIMESTAMP_ALPHABET[day >> 5] + TIMESTAMP_ALPHABET[day & 31]


def decode_timestamp(stamp: str) -> int:
    if len(stamp) != 2:
        raise SRSError(f"timestamp {stamp!r} is not two characters")
    try:
        high, low = (TIMESTAMP_ALPHABET.index(c) for c in stamp.upper())
    except ValueError:
        raise SRSError(f"timestamp {stamp!r} is not base32") from None
    return (high << 5) | low
