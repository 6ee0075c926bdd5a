"""In-memory matchers for address lists and IP networks (pure, no I/O).

A `ListIndex` is built once from a list's entries (configuration plus database) and then
answers many lookups per second: exact addresses and exact domains are dictionary hits,
wildcards and regular expressions are compiled into one combined regex, so a lookup
never loops over entries in Python. A broken entry is skipped with a warning: a typo in
the web UI must not stop mail.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

log = logging.getLogger("postwall.lists")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Kind(IntEnum):
    """How specific an entry is; a higher value is more specific."""

    PATTERN = 1  # wildcard or /regex/
    DOMAIN = 2  # @example.com or example.com
    ADDRESS = 3  # user@example.com


@dataclass(frozen=True, slots=True)
class ListMatch:
    entry: str  # the entry as written, for the reason text
    kind: Kind


def normalize_address(address: str) -> str:
    """`<User@Example.COM>` -> `user@example.com`; the null sender stays ""."""
    return address.strip().strip("<>").strip().lower()


_GLOBAL_FLAGS_RE = re.compile(r"^\(\?([aiLmsux]+)\)")
# Numbered or named back-references and named groups break when patterns are combined.
_NOT_COMBINABLE_RE = re.compile(r"\\[1-9]|\(\?P[<=]|\\g<")


def _glob(text: str) -> str:
    """A wildcard (`*` any run, `?` one character, never crossing `@`) as a regex."""
    out = []
    for ch in text:
        if ch == "*":
            out.append("[^@]*")
        elif ch == "?":
            out.append("[^@]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


class _Combined:
    """Many patterns as one alternation; the entry that matched comes from `lastindex`
    (each alternative is wrapped in a group, which closes after any group inside it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sources: list[tuple[str, str]] = []  # (regex source, entry)
        self.regex: re.Pattern[str] | None = None
        self.entry_of_group: dict[int, str] = {}

    def add(self, source: str, entry: str) -> None:
        self.sources.append((source, entry))

    def compile(self) -> list[tuple[re.Pattern[str], str]]:
        """Build the alternation; returns what must be matched one by one instead."""
        if not self.sources:
            return []
        parts: list[str] = []
        group = 1
        for source, entry in self.sources:
            self.entry_of_group[group] = entry
            parts.append(f"({source})")
            group += 1 + re.compile(source, re.IGNORECASE).groups
        try:
            self.regex = re.compile("|".join(parts), re.IGNORECASE)
        except (re.error, OverflowError, RecursionError) as exc:
            # Each part compiled alone, so this should not happen; stay correct, if slower.
            log.warning("list %s: patterns do not combine (%s); matching one by one",
                        self.name, exc)
            self.regex = None
            self.entry_of_group.clear()
            return [(re.compile(source, re.IGNORECASE), entry) for source, entry in self.sources]
        return []

    def entry(self, found: re.Match[str] | None) -> str | None:
        if found is None or found.lastindex is None:
            return None
        return self.entry_of_group.get(found.lastindex)


class ListIndex:
    """Case-insensitive matcher for one address list.

    Entries: `user@example.com` (that address), `@example.com` or `example.com` (that
    domain exactly, not its subdomains), wildcards with `*` and `?` (`*.example.com` and
    `@*.example.com` match the domain, `*@*.example.com` or `info@*` the whole address),
    and `/regex/` searched in the whole lower-case address.
    """

    def __init__(self, entries: Iterable[str] = (), name: str = "") -> None:
        self.name = name
        self._addresses: dict[str, str] = {}
        self._domains: dict[str, str] = {}
        self._suffixes: dict[str, str] = {}  # ".example.com" for *.example.com
        self._address_wild = _Combined(name)  # full-matched against the address
        self._domain_wild = _Combined(name)  # full-matched against the domain
        self._anchored = _Combined(name)  # /^.../ regexes: tried at the start only
        self._regexes = _Combined(name)  # other regexes: searched in the address
        self._slow: list[tuple[re.Pattern[str], str]] = []  # regexes that cannot combine
        accepted: dict[str, None] = {}
        for raw in entries:
            entry = raw.strip()
            if not entry or entry.startswith("#") or entry in accepted:
                continue
            if self._add(entry):
                accepted[entry] = None
        self.entries: tuple[str, ...] = tuple(accepted)
        for combined in (self._address_wild, self._domain_wild, self._anchored, self._regexes):
            self._slow.extend(combined.compile())

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __repr__(self) -> str:
        return f"ListIndex({self.name!r}, {len(self.entries)} entries)"

    def _add(self, entry: str) -> bool:
        if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
            return self._add_regex(entry[1:-1], entry)
        value = normalize_address(entry)
        if not value:
            return False
        if "*" in value or "?" in value:
            local, at, domain = value.lstrip("@").rpartition("@")
            if at and local not in ("", "*"):
                self._address_wild.add(f"{_glob(local)}@{_glob(domain)}", entry)
            else:
                self._add_domain_pattern(domain.rstrip("."), entry)
        elif value.startswith("@"):
            self._domains.setdefault(value[1:].rstrip("."), entry)
        elif "@" in value:
            self._addresses.setdefault(value, entry)
        else:
            self._domains.setdefault(value.rstrip("."), entry)
        return True

    def _add_domain_pattern(self, domain: str, entry: str) -> None:
        if "*" not in domain and "?" not in domain:
            self._domains.setdefault(domain, entry)  # *@example.com
        elif domain.startswith("*.") and "*" not in domain[1:] and "?" not in domain[1:]:
            self._suffixes.setdefault(domain[1:], entry)  # *.example.com: a dict probe
        else:
            self._domain_wild.add(_glob(domain), entry)

    def _add_regex(self, source: str, entry: str) -> bool:
        try:
            compiled = re.compile(source, re.IGNORECASE)
        except (re.error, OverflowError, RecursionError) as exc:
            log.warning("list %s: skipping invalid regex entry %r: %s", self.name, entry, exc)
            return False
        flags = _GLOBAL_FLAGS_RE.match(source)
        if flags:  # (?i)foo is only legal at the start; scope it so that it can combine
            tail = "\n" if "x" in flags.group(1) else ""  # a verbose comment must end
            source = f"(?{flags.group(1)}:{source[flags.end():]}{tail})"
        if compiled.groupindex or _NOT_COMBINABLE_RE.search(source):
            self._slow.append((compiled, entry))
        else:
            try:
                re.compile(source, re.IGNORECASE)
            except (re.error, OverflowError, RecursionError):
                self._slow.append((compiled, entry))
                return True
            anchored = source.startswith(("^", "\\A")) and "|" not in source
            (self._anchored if anchored else self._regexes).add(source, entry)
        return True

    def lookup(self, address: str) -> ListMatch | None:
        """The most specific entry matching `address`, or None (always for `<>`)."""
        value = normalize_address(address)
        if not value:
            return None
        entry = self._addresses.get(value)
        if entry is not None:
            return ListMatch(entry, Kind.ADDRESS)
        domain = value.rpartition("@")[2].rstrip(".")
        entry = self._domains.get(domain)
        if entry is not None:
            return ListMatch(entry, Kind.DOMAIN)
        if self._suffixes:
            dot = domain.find(".", 1)
            while dot > 0:  # longest suffix first: the most specific entry wins
                entry = self._suffixes.get(domain[dot:])
                if entry is not None:
                    return ListMatch(entry, Kind.PATTERN)
                dot = domain.find(".", dot + 1)
        if self._address_wild.regex is not None and "@" in value:
            entry = self._address_wild.entry(self._address_wild.regex.fullmatch(value))
            if entry is not None:
                return ListMatch(entry, Kind.PATTERN)
        if self._domain_wild.regex is not None:
            entry = self._domain_wild.entry(self._domain_wild.regex.fullmatch(domain))
            if entry is not None:
                return ListMatch(entry, Kind.PATTERN)
        if self._anchored.regex is not None:
            entry = self._anchored.entry(self._anchored.regex.match(value))
            if entry is not None:
                return ListMatch(entry, Kind.PATTERN)
        if self._regexes.regex is not None:
            entry = self._regexes.entry(self._regexes.regex.search(value))
            if entry is not None:
                return ListMatch(entry, Kind.PATTERN)
        for pattern, entry in self._slow:
            if pattern.search(value):
                return ListMatch(entry, Kind.PATTERN)
        return None

    def match(self, address: str) -> str | None:
        """The entry that matched `address` (for the reason text), or None."""
        found = self.lookup(address)
        return found.entry if found is not None else None

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.lookup(address) is not None


def _as_ip(value: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(value) if isinstance(value, str) else value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_network(entry: str) -> IPNetwork:
    network = ipaddress.ip_network(entry.strip(), strict=False)
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        address = network.network_address.ipv4_mapped
        assert address is not None
        return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


class IPIndex:
    """CIDR matcher for IPv4 and IPv6; IPv4-mapped IPv6 addresses count as IPv4.

    Lookups hash the address masked to each prefix length in use (at most 33 or 129
    dictionary probes), never a loop over the entries; the most specific network wins.
    """

    def __init__(self, entries: Iterable[str] = (), name: str = "") -> None:
        self.name = name
        # version -> prefix length -> network address as int -> network
        self._nets: dict[int, dict[int, dict[int, IPNetwork]]] = {4: {}, 6: {}}
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            try:
                network = _as_network(entry)
            except ValueError as exc:
                log.warning("list %s: skipping invalid network %r: %s", self.name, entry, exc)
                continue
            by_prefix = self._nets[network.version].setdefault(network.prefixlen, {})
            if int(network.network_address) not in by_prefix:
                by_prefix[int(network.network_address)] = network
                networks.append(network)
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self._order = {
            version: sorted(by_prefix.items(), reverse=True)
            for version, by_prefix in self._nets.items()
        }

    def __len__(self) -> int:
        return len(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"IPIndex({self.name!r}, {len(self.networks)} networks)"

    def match(self, address: str | IPAddress) -> IPNetwork | None:
        """The most specific network containing `address`, or None (also for garbage)."""
        try:
            ip = _as_ip(address)
        except ValueError:
            return None
        bits = ip.max_prefixlen
        value = int(ip)
        for prefixlen, by_network in self._order[ip.version]:
            mask = ((1 << prefixlen) - 1) << (bits - prefixlen) if prefixlen else 0
            network = by_network.get(value & mask)
            if network is not None:
                return network
        return None

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str | ipaddress.IPv4Address | ipaddress.IPv6Address) and (
            self.match(address) is not None
        )
