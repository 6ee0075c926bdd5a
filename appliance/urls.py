"""Hosts of the URLs in a text, reduced to what URI blocklists list (pure, no I/O).

URI lists carry registered domains ("example.co.uk", never "www.a.example.co.uk"), so
every host is reduced with the public suffix list that the `publicsuffixlist` package
ships (it is never fetched at run time). Found are:

- scheme URLs: `http://`, `https://`, `ftp://` (a userinfo part is dropped:
  `http://bank.example@evil.example/` leads to evil.example), with IDN hosts in punycode;
- bare `www.` hosts in plain text ("visit www.example.com");
- in HTML, after entity decoding (`&#104;ttp://` is http://), also protocol-relative
  `href="//host/..."` and `src=` attributes;
- IP literals (`http://192.0.2.1/`, `http://[2001:db8::1]/`), kept apart from domains.

Deliberate obfuscations (hxxp, "example dot com") are out of scope. Work is bounded by
the caller: the text is cut to a size, and extraction stops after a number of hosts.
"""

from __future__ import annotations

import functools
import html
import ipaddress
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from publicsuffixlist import PublicSuffixList

# Scheme URLs and bare www. hosts; the authority is cut at the first character that
# cannot be part of one. \w lets IDN hosts through (they are checked after IDNA).
_AUTHORITY = r"[^\s/?#\"'<>\\()\[\]{}|^`]{1,512}"
_URL_RE = re.compile(
    r"(?i)(?:\b(?:https?|ftps?)://(?P<authority>\[[0-9a-f:.]{2,64}\]|" + _AUTHORITY + r")"
    r"|(?<![\w.@-])(?P<www>www\d{0,3}\.[\w.-]{1,253}))"
)
# In HTML also href="//host/..." and src='//host'.
_HTML_ATTR_RE = re.compile(
    r"(?i)\b(?:href|src|action|background)\s*=\s*[\"']?\s*//(?P<authority>" + _AUTHORITY + ")"
)
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PORT_RE = re.compile(r":\d*$")


@dataclass(frozen=True, slots=True)
class URLHost:
    """A host found in a URL: a lower-case ASCII domain, or an IP address."""

    domain: str | None = None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    def __str__(self) -> str:
        return self.domain if self.domain is not None else str(self.ip)


def _clean_domain(text: str) -> str | None:
    """A syntactically valid lower-case ASCII host name, or None."""
    name = text.strip().rstrip(".").lower()
    if not name or ".." in name:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253:
        return None
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None  # an IP-like name such as 1.2.3.4.5, or a bare number
    return name


def parse_authority(authority: str) -> URLHost | None:
    """The host of a URL authority (`user:pw@host:port`), or None when it is not one."""
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        literal = host[1:].partition("]")[0]
        try:
            return URLHost(ip=ipaddress.IPv6Address(literal))
        except ValueError:
            return None
    host = _PORT_RE.sub("", host)
    if "%" in host:
        host = urllib.parse.unquote(host)
    # Trailing punctuation of the sentence around it: "see http://example.com, or".
    host = host.rstrip(".,;:!?*'\"=&+~")
    if host[-1:].isdigit():  # a name never ends in a digit; parsing an address is slow
        try:
            return URLHost(ip=ipaddress.ip_address(host))
        except ValueError:
            pass
    domain = _clean_domain(host)
    return URLHost(domain=domain) if domain is not None else None


def iter_url_hosts(text: str, *, is_html: bool = False) -> Iterator[URLHost]:
    """Hosts of the URLs in `text`, in order of first appearance (a host written the
    same way twice is yielded once)."""
    if is_html:
        text = html.unescape(text)
        matches = sorted(
            [*_URL_RE.finditer(text), *_HTML_ATTR_RE.finditer(text)], key=lambda m: m.start()
        )
    else:
        matches = _URL_RE.finditer(text)  # type: ignore[assignment]
    seen: set[str] = set()  # mail repeats its links: parse each spelling once
    for match in matches:
        raw = match.group(0 if match.groupdict().get("www") else "authority").lower()
        if raw in seen:
            continue
        seen.add(raw)
        if match.groupdict().get("www"):
            domain = _clean_domain(raw.rstrip(".,;:!?-_"))
            host = URLHost(domain=domain) if domain is not None else None
        else:
            host = parse_authority(raw)
        if host is not None:
            yield host


@functools.cache
def _psl(private: bool) -> PublicSuffixList:
    # Parsing the bundled list takes ~0.1 s: once per process and flavour.
    return PublicSuffixList(only_icann=not private)


def registered_domain(domain: str, *, private_suffixes: bool = False) -> str | None:
    """`a.b.example.co.uk` -> `example.co.uk`; None for a public suffix itself (`co.uk`).
    A name under an unknown top-level domain counts as one label below it."""
    return _psl(private_suffixes).privatesuffix(domain)


def warm_up(private_suffixes: bool = False) -> None:
    """Load the public suffix list now rather than on the first message."""
    _psl(private_suffixes)


def domain_matches(domain: str, entries: frozenset[str]) -> bool:
    """True when `domain` is one of `entries` or below one (entries are lower case)."""
    if domain in entries:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in entries for i in range(1, len(parts) - 1))


@dataclass(slots=True)
class URLTargets:
    """What a message's URLs lead to, deduplicated, in order of first appearance."""

    domains: list[str] = field(default_factory=list)
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)
    truncated: bool = False  # more distinct targets than the limit: the rest were dropped

    def __len__(self) -> int:
        return len(self.domains) + len(self.ips)


class TargetCollector:
    """Collects registered domains and IPs from texts, up to `limit` distinct ones.

    `skip` holds registered domains never collected (local domains, the skip list), each
    also matching its subdomains; `local_suffixes` the same for names below them."""

    def __init__(self, limit: int, skip: frozenset[str] = frozenset(), *,
                 private_suffixes: bool = False, collect_ips: bool = True) -> None:
        self.limit = limit
        self.skip = skip
        self.private_suffixes = private_suffixes
        self.collect_ips = collect_ips
        self.targets = URLTargets()
        self._hosts_seen: set[str] = set()
        self._domains: set[str] = set()
        self._ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()

    @property
    def full(self) -> bool:
        return self.targets.truncated

    def add_text(self, text: str, *, is_html: bool = False) -> None:
        for host in iter_url_hosts(text, is_html=is_html):
            if self.full:
                return
            self.add(host)

    def add(self, host: URLHost) -> None:
        if host.ip is not None:
            ip = host.ip
            if not self.collect_ips or ip in self._ips or not ip.is_global:
                return
            if self._room():
                self._ips.add(ip)
                self.targets.ips.append(ip)
            return
        assert host.domain is not None
        if host.domain in self._hosts_seen:
            return
        self._hosts_seen.add(host.domain)
        domain = registered_domain(host.domain, private_suffixes=self.private_suffixes)
        if domain is None or domain in self._domains or domain_matches(domain, self.skip):
            return
        if domain_matches(host.domain, self.skip):
            return
        if self._room():
            self._domains.add(domain)
            self.targets.domains.append(domain)

    def _room(self) -> bool:
        if len(self.targets) >= self.limit:
            self.targets.truncated = True
            return False
        return True
