"""BATV return-path signing in the PRVS format (draft-levine-smtp-batv-01, 4.1).

An outgoing envelope sender `user@example.com` becomes `prvs=KDDDSSSSSS=user@example.com`:
K is the key number (0-9), DDD the day the tag expires (days since 1970-01-01, modulo
1000), SSSSSS the first three bytes, in hex, of an HMAC over "K DDD address". A genuine
bounce comes back to that address; backscatter (bounces of mail forged in our name) does
not carry a valid tag.

The address enters the hash in lower case and the hex digits compare without case: some
MTAs change the case of the address they bounce to, and a tag must survive that. Pure
logic; the key file lives in appliance/keyfile.py."""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from appliance import keyfile

DAY = 86400
DAY_MODULUS = 1000  # DDD has three digits
MAX_VALID_DAYS = 60  # far below DAY_MODULUS, so an expired day is never read as valid
# A tag expiring up to this many days beyond the longest validity is still accepted: the
# appliance that signed (one of a cluster, say) may run a day ahead of the one checking.
CLOCK_SKEW_DAYS = 1

# prvs=KDDDSSSSSS=local and the older, reversed form local=prvs=KDDDSSSSSS (draft-00).
_PRVS_RE = re.compile(r"^prvs=([0-9])([0-9]{3})([0-9a-f]{6})=(.+)$", re.IGNORECASE)
_PRVS_OLD_RE = re.compile(r"^(.+)=prvs=([0-9])([0-9]{3})([0-9a-f]{6})$", re.IGNORECASE)
# Anything that claims to be a tag, to tell "malformed" from "not tagged at all".
_LOOKS_TAGGED_RE = re.compile(r"(^prvs=)|(=prvs=)", re.IGNORECASE)


class TagStatus(StrEnum):
    VALID = "valid"
    UNTAGGED = "untagged"
    MALFORMED = "malformed"  # says prvs= but is not KDDDSSSSSS
    UNKNOWN_KEY = "unknown key"  # key number not in the key file (removed, or forged)
    BAD_HASH = "bad hash"  # forged or damaged
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TagCheck:
    status: TagStatus
    address: str  # the address without the tag (as given when untagged or malformed)

    @property
    def valid(self) -> bool:
        return self.status is TagStatus.VALID


@dataclass(frozen=True, slots=True)
class BATVKey:
    number: int
    secret: bytes


class BATVKeyError(keyfile.KeyFileError):
    """The BATV key file is unusable."""


def parse_key_lines(lines: list[str]) -> list[BATVKey]:
    """`K SECRET` per line (K 0-9, SECRET at least 32 characters)."""
    keys: list[BATVKey] = []
    seen: set[int] = set()
    for number, line in enumerate(lines, 1):
        digit, _, secret = line.partition(" ")
        secret = secret.strip()
        if len(digit) != 1 or not digit.isdigit() or len(secret) < 32:
            raise BATVKeyError(
                f"BATV key line {number}: expected 'K SECRET' (K a digit 0-9, SECRET at "
                "least 32 characters)"
            )
        if int(digit) in seen:
            raise BATVKeyError(f"BATV key line {number}: key number {digit} appears twice")
        seen.add(int(digit))
        keys.append(BATVKey(int(digit), secret.encode("ascii")))
    return keys


def load_keys(path: Path) -> list[BATVKey]:
    """The keys of `path`, generating key 1 on first use (owner-only file)."""
    return parse_key_lines(keyfile.load_or_create(path, f"1 {keyfile.new_secret()}"))


def day_number(now: float) -> int:
    return int(now // DAY)


def _signature(key: BATVKey, ddd: str, address: str, digest: str) -> str:
    data = f"{key.number}{ddd}{address.lower()}".encode("utf-8", "surrogateescape")
    return hmac.new(key.secret, data, digest).hexdigest()[:6]


def sign(
    address: str, key: BATVKey, *, valid_days: int = 7, now: float | None = None,
    digest: str = "sha1",
) -> str:
    """`prvs=KDDDSSSSSS=local@domain` for `address`, expiring after `valid_days`."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise ValueError(f"not an address: {address!r}")
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise ValueError(f"valid_days must be 1..{MAX_VALID_DAYS}")
    expires = (day_number(time.time() if now is None else now) + valid_days) % DAY_MODULUS
    ddd = f"{expires:03d}"
    return f"prvs={key.number}{ddd}{_signature(key, ddd, address, digest)}={local}@{domain}"


def strip(address: str) -> tuple[str, tuple[int, str, str] | None, bool]:
    """(plain address, (key number, DDD, hash) or None, looks tagged)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, None, False
    match = _PRVS_RE.match(local)
    if match is not None:
        plain = f"{match.group(4)}@{domain}"
        return plain, (int(match.group(1)), match.group(2), match.group(3)), True
    match = _PRVS_OLD_RE.match(local)
    if match is not None:
        plain = f"{match.group(1)}@{domain}"
        return plain, (int(match.group(2)), match.group(3), match.group(4)), True
    return address, None, _LOOKS_TAGGED_RE.search(local) is not None


def check(
    address: str, keys: list[BATVKey], *, now: float | None = None, digest: str = "sha1"
) -> TagCheck:
    """Whether `address` carries a valid tag, and the address without it. The expiry day
    is covered by the hash, so it is trusted as written: a tag is valid up to and
    including its expiry day (and CLOCK_SKEW_DAYS earlier than it could have been made)."""
    plain, tag, looks_tagged = strip(address)
    if tag is None:
        return TagCheck(TagStatus.MALFORMED if looks_tagged else TagStatus.UNTAGGED, plain)
    number, ddd, given = tag
    key = next((k for k in keys if k.number == number), None)
    if key is None:
        return TagCheck(TagStatus.UNKNOWN_KEY, plain)
    if not hmac.compare_digest(_signature(key, ddd, plain, digest), given.lower()):
        return TagCheck(TagStatus.BAD_HASH, plain)
    today = day_number(time.time() if now is None else now)
    days_left = (int(ddd) - today) % DAY_MODULUS
    if days_left > MAX_VALID_DAYS + CLOCK_SKEW_DAYS:
        return TagCheck(TagStatus.EXPIRED, plain)
    return TagCheck(TagStatus.VALID, plain)
