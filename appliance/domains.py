"""Domain names as SMTP sees them: syntax (RFC 5321 Domain, RFC 1123 labels) and which
ones are ours. Pure functions, shared by the HELO and sender checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.config.schema import DOMAIN_RE


def domain_problem(name: str) -> str | None:
    """Why `name` (ASCII, lowercase, without a trailing dot) is not a usable host or mail
    domain name, or None when it is one. A single label is valid here: whether a name
    must be fully qualified is the caller's rule."""
    if not name:
        return "empty name"
    if not name.isascii():
        return "not ASCII (after IDNA encoding)"
    if not DOMAIN_RE.match(name) or name.endswith("."):
        return "not a valid domain name (letters, digits, hyphens; labels of 1-63)"
    if name.rpartition(".")[2].isdigit():
        # RFC 3696 2: a top-level label is never all-numeric, so "1.2.3.999" is a
        # mistyped address, not a name.
        return "numeric top-level label"
    return None


def to_ascii(name: str) -> str | None:
    """The A-label form of a (possibly Unicode) domain, lowercase and without a trailing
    dot; None when it cannot be encoded."""
    name = name.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


@dataclass(frozen=True, slots=True)
class LocalDomains:
    """`local_domains` from the configuration: exact names and `*.suffix` wildcards."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"

    @classmethod
    def from_config(cls, entries: Iterable[str]) -> LocalDomains:
        entries = [e.lower().rstrip(".") for e in entries]
        return cls(
            exact=frozenset(e for e in entries if not e.startswith("*.")),
            suffixes=tuple(e[1:] for e in entries if e.startswith("*.")),
        )

    def contains(self, domain: str) -> bool:
        """True for a domain we accept mail for (the recipient rule of the proxy)."""
        domain = domain.lower().rstrip(".")
        return domain in self.exact or domain.endswith(self.suffixes)

    def covers(self, name: str) -> bool:
        """True for a local domain or any name under one (mail.example.com under
        example.com): names only our own hosts may use."""
        name = name.lower().rstrip(".")
        if self.contains(name):
            return True
        return any(name.endswith("." + domain) for domain in self.exact)


def printable(text: str, limit: int = 100) -> str:
    """Client-supplied text made safe for a log line or a symbol reason."""
    cleaned = "".join(c if c.isprintable() and c != "\\" else f"\\x{ord(c):02x}"
                      for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def resolves_to(records: Iterable[str], ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when one of the A/AAAA `records` of a name is `ip` (IPv4-mapped IPv6 counts
    as the IPv4 address it carries)."""
    for record in records:
        try:
            address = ipaddress.ip_address(record)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address == ip:
            return True
    return False
