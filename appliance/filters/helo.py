"""HELO/EHLO validation: syntax, fully qualified, forged, address literals, DNS.

RFC 5321 4.1.1.1: the argument is the client's fully qualified domain name, or an
address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) when it has none. Spam software
announces bare IPs, single words, our own name or domain, or a literal of another host.
aiosmtpd refuses only an empty argument (501), so every other judgement is made here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from appliance.config.schema import HeloSettings, parse_hostport
from appliance.context import ConnectionContext, IPAddress, TransactionContext
from appliance.dns import DNSStatus
from appliance.domains import LocalDomains, domain_problem, printable, resolves_to, to_ascii
from appliance.filters.base import Filter
from appliance.verdict import (
    NO_FINDINGS,
    Decision,
    Final,
    Reply,
    Stage,
    Symbol,
    SymbolSpec,
    Verdict,
)

GROUP = "helo"
INVALID_REPLY = Reply(501, "5.5.2", "Invalid HELO/EHLO name (RFC 5321 4.1.1.1)")


class HeloForm(StrEnum):
    DOMAIN = "domain"
    ADDRESS_LITERAL = "address literal"
    BARE_IP = "bare ip"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class ParsedHelo:
    form: HeloForm
    name: str = ""  # DOMAIN: the A-label form, lowercase, without a trailing dot
    ip: IPAddress | None = None  # ADDRESS_LITERAL and BARE_IP
    problem: str = ""  # INVALID: why


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_helo(text: str) -> ParsedHelo:
    """Classify a HELO/EHLO argument (pure; no DNS)."""
    text = text.strip()
    if not text:
        return ParsedHelo(HeloForm.INVALID, problem="empty")
    if any(c.isspace() for c in text):
        return ParsedHelo(HeloForm.INVALID, problem="contains white space")
    if text.startswith("[") or text.endswith("]"):
        return _parse_literal(text)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return ParsedHelo(HeloForm.BARE_IP, ip=_unmapped(ip))
    name = to_ascii(text)
    if name is None:
        return ParsedHelo(HeloForm.INVALID, problem="not encodable as IDNA")
    problem = domain_problem(name)
    if problem is not None:
        return ParsedHelo(HeloForm.INVALID, problem=problem)
    return ParsedHelo(HeloForm.DOMAIN, name=name)


def _parse_literal(text: str) -> ParsedHelo:
    if not (text.startswith("[") and text.endswith("]")) or len(text) < 3:
        return ParsedHelo(HeloForm.INVALID, problem="unbalanced brackets")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ip: IPAddress = ipaddress.IPv6Address(inner[5:])
        else:
            ip = ipaddress.IPv4Address(inner)
    except ValueError:
        return ParsedHelo(HeloForm.INVALID, problem="not an IPv4 or IPv6: address literal")
    return ParsedHelo(HeloForm.ADDRESS_LITERAL, ip=_unmapped(ip))


def _listener_ips(settings_listen: tuple[str | None, ...]) -> frozenset[IPAddress]:
    ips: set[IPAddress] = set()
    for value in settings_listen:
        if not value:
            continue
        ip = ipaddress.ip_address(parse_hostport(value)[0])
        if not ip.is_unspecified:  # 0.0.0.0: the connection's own address tells
            ips.add(_unmapped(ip))
    return frozenset(ips)


class HeloFilter(Filter):
    """Judges the HELO/EHLO name of inbound clients; a second HELO is judged afresh."""

    name: ClassVar[str] = "helo"
    stage: ClassVar[Stage] = Stage.HELO
    waits_on_network: ClassVar[bool] = True  # only with check_dns; harmless otherwise
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("HELO_INVALID", 2.5, "HELO name is not a valid domain or address literal",
                   GROUP),
        SymbolSpec("HELO_NOT_FQDN", 2.0, "HELO name is not fully qualified (no dot)", GROUP),
        SymbolSpec("HELO_BARE_IP", 2.0, "HELO is an IP address without brackets", GROUP),
        SymbolSpec("HELO_LITERAL_MISMATCH", 2.0,
                   "HELO address literal is not the client's address", GROUP),
        SymbolSpec("HELO_FORGED", 4.0,
                   "HELO claims to be us: our host name, one of our addresses, a local "
                   "domain or a name under one", GROUP),
        SymbolSpec("HELO_NO_DNS", 1.0, "HELO name has no A/AAAA record (check_dns)", GROUP),
        SymbolSpec("HELO_NOT_CLIENT", 0.5,
                   "HELO name does not resolve to the client (check_dns_matches_client)", GROUP),
        SymbolSpec("HELO_TEMPERROR", 0.0, "The DNS lookup of the HELO name failed", GROUP),
    )

    settings: HeloSettings

    def setup(self) -> None:
        declared = {spec.name for spec in self.symbols}
        unknown = sorted(set(self.settings.reject) - declared)
        if unknown:
            raise ValueError(f"filters.helo.reject names unknown symbol(s): {', '.join(unknown)}"
                             f" (one of {', '.join(sorted(declared))})")
        self._reject = frozenset(self.settings.reject)
        config = self.config
        self._own_name = (to_ascii(config.smtp.hostname) or "").lower()
        self._local = LocalDomains.from_config(config.local_domains)
        self._listener_ips = _listener_ips((config.listen.inbound, config.listen.relay))
        self._our_networks = tuple(ipaddress.ip_network(n) for n in config.relay_networks)

    async def check(self, ctx: TransactionContext) -> Verdict:
        conn = ctx.connection
        if conn.is_relay or conn.helo is None:
            return NO_FINDINGS
        parsed = parse_helo(conn.helo)
        shown = printable(conn.helo)
        found: list[Symbol] = []
        # Our own hosts (relay_networks) may use our names, and their names need no DNS.
        trusted = any(conn.peer_ip in net for net in self._our_networks)
        if parsed.form is HeloForm.INVALID:
            found.append(self.hit("HELO_INVALID", f"{shown}: {parsed.problem}"))
        elif parsed.form is HeloForm.DOMAIN:
            forged = "" if trusted else self._forged_name(parsed.name)
            if forged:
                found.append(self.hit("HELO_FORGED", f"{shown}: {forged}"))
            if "." not in parsed.name:
                found.append(self.hit("HELO_NOT_FQDN", shown))
            elif not forged and not trusted and self.settings.check_dns:
                found.extend(await self._dns_findings(parsed.name, shown, conn))
        else:
            assert parsed.ip is not None
            if parsed.form is HeloForm.BARE_IP:
                found.append(self.hit("HELO_BARE_IP", shown))
            if parsed.ip != conn.peer_ip:
                if not trusted and self._is_our_address(parsed.ip, conn):
                    found.append(self.hit("HELO_FORGED", f"{shown}: our address"))
                if parsed.form is HeloForm.ADDRESS_LITERAL:
                    found.append(self.hit(
                        "HELO_LITERAL_MISMATCH", f"{shown} from {conn.peer_ip}"
                    ))
        return self._verdict(found)

    def _forged_name(self, name: str) -> str:
        if name == self._own_name:
            return "our host name"
        if self._local.covers(name):
            return "a local domain"
        return ""

    def _is_our_address(self, ip: IPAddress, conn: ConnectionContext) -> bool:
        return ip == conn.local_ip or ip in self._listener_ips

    async def _dns_findings(
        self, name: str, shown: str, conn: ConnectionContext
    ) -> list[Symbol]:
        resolver = self.services.resolver
        if resolver is None:  # no DNS where none may be asked (unit tests)
            return []
        answer = await resolver.addresses(name)
        if answer.status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA):
            return [self.hit("HELO_NO_DNS", f"{shown}: {answer.status.value}")]
        if answer.is_failure:
            return [self.hit("HELO_TEMPERROR", f"{shown}: {answer.status.value}")]
        if self.settings.check_dns_matches_client and not resolves_to(answer.records, conn.peer_ip):
            listed = ", ".join(answer.records[:4])
            return [self.hit("HELO_NOT_CLIENT", f"{shown} is {listed}, not {conn.peer_ip}")]
        return []

    def _verdict(self, found: list[Symbol]) -> Verdict:
        refusing = next((s for s in found if s.name in self._reject), None)
        if refusing is None:
            return Verdict(symbols=tuple(found))
        reply = INVALID_REPLY if refusing.name == "HELO_INVALID" else Reply(
            550, "5.7.1", f"HELO/EHLO rejected: {self._description(refusing.name)}"
        )
        others = tuple(s for s in found if s is not refusing)
        return Verdict(symbols=others, final=Final(Decision.REJECT, refusing, reply))

    def _description(self, name: str) -> str:
        return next(spec.description for spec in self.symbols if spec.name == name)

