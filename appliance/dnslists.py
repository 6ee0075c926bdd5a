"""DNS list zones (DNSBL, DNSWL, URIBL): what an answer means, and the sanity guard.

A DNS list answers a question `<key>.<zone>` with an A record in 127.0.0.0/8 when the key
(a reversed client IP, a domain) is listed, and NXDOMAIN when it is not (RFC 5782). The
address says why it is listed: `ZoneRule` maps it to a declared symbol, either by exact
code (`127.0.0.2` SBL, `127.0.0.10` PBL ...) or, for lists such as multi.uribl.com, by bit
(`127.0.0.14` = black 2 + grey 4 + red 8).

Two kinds of answer must never score:

- Answers outside 127.0.0.0/8 are bogus (a hijacked or wildcarded parent domain, a
  captive resolver): ignored.
- Answers meaning "your resolver is refused or rate-limited" (Spamhaus 127.255.255.252/
  254/255, URIBL's 127.0.0.1) would otherwise list every client. They suspend the zone.

`ZoneGuard` also probes each zone now and then with RFC 5782's test entries: 127.0.0.2
(or the name TEST) must be listed, 127.0.0.1 (INVALID) must not. A zone that lists its
"never listed" entry lists everything (an expired domain parked behind a wildcard, a list
that shut down that way on purpose); a zone that does not list its test entry is dead or
misspelt. Either suspends the zone for a while: an error in the log, the gauge
`postwall_dnsbl_zone_suspended{zone}` at 1, and an entry in `suspended_zones()` for
status pages, instead of scoring (or missing) every message.

The guard keeps its state per worker process, across configuration reloads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from appliance import metrics, notify
from appliance.dns import DNSAnswer, reverse_pointer
from appliance.verdict import SymbolSpec

if TYPE_CHECKING:
    from appliance.config.schema import DNSListZone
    from appliance.dns import Resolver

log = logging.getLogger("postwall.dnslists")

LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_HOST_BITS = 0x00FFFFFF  # what a bitmask code can set: the part below 127.

# RFC 5782 section 5: test entries of IP-keyed lists and of domain-keyed lists.
IP_PROBE_LISTED = ipaddress.IPv4Address("127.0.0.2")
IP_PROBE_UNLISTED = ipaddress.IPv4Address("127.0.0.1")

# After an inconclusive probe (the server did not answer) try again sooner than usual.
PROBE_RETRY_SECONDS = 60.0


class ListKind(StrEnum):
    """The three uses of a DNS list: its symbol prefix and its scoring group."""

    DNSBL = "dnsbl"  # client IP, bad
    DNSWL = "dnswl"  # client IP, good (negative weights)
    URIBL = "uribl"  # domains of URLs in the body, bad

    @property
    def prefix(self) -> str:
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class CodeRule:
    address: int  # the answer address as an integer
    text: str  # as configured, for reasons
    symbol: str
    weight: float


@dataclass(frozen=True, slots=True)
class Listing:
    """One scoring finding of a zone: a declared symbol for one answer code."""

    symbol: str
    code: str  # the answer address(es) that matched


@dataclass(frozen=True, slots=True)
class ZoneResult:
    """What one answer of a zone means."""

    listings: tuple[Listing, ...] = ()
    refused: str | None = None  # the refusal code seen: suspend, do not score
    bogus: tuple[str, ...] = ()  # answers outside 127.0.0.0/8, ignored
    failure: str | None = None  # no usable answer (timeout, SERVFAIL ...)

    @property
    def listed(self) -> bool:
        return bool(self.listings)


class ZoneRule:
    """One configured zone, compiled: its symbols and how its answers map to them."""

    def __init__(self, settings: DNSListZone, kind: ListKind) -> None:
        self.zone = settings.zone
        self.kind = kind
        self.group = kind.value
        self.label = settings.symbol_label
        self.symbol = f"{kind.prefix}_{self.label}"
        self.weight = settings.weight
        self.bitmask = settings.bitmask
        self.probe = settings.probe
        self.refusals = frozenset(settings.refusal_codes)
        self.codes = tuple(
            CodeRule(int(ipaddress.IPv4Address(text)), text,
                     f"{self.symbol}_{code.label}", code.weight)
            for text, code in settings.codes.items()
        )
        self.ips: bool = getattr(settings, "ips", False)  # URIBL: IP-literal URLs too
        self.probe_listed: str = getattr(settings, "probe_listed", "") or ""
        self.probe_unlisted: str = getattr(settings, "probe_unlisted", "") or ""

    def __repr__(self) -> str:
        return f"ZoneRule({self.kind.value} {self.zone})"

    # -- symbols -----------------------------------------------------------------------

    def symbol_specs(self) -> list[SymbolSpec]:
        """The symbols this zone may emit, with their configured weights."""
        what = {
            ListKind.DNSBL: "Client address listed in",
            ListKind.DNSWL: "Client address listed in the allow list",
            ListKind.URIBL: "A URL in the message names a domain listed in",
        }[self.kind]
        specs = [
            SymbolSpec(code.symbol, code.weight, f"{what} {self.zone} with {code.text}",
                       self.group)
            for code in self.codes
        ]
        if self.weight is not None:
            detail = " (an answer its codes do not name)" if self.codes else ""
            specs.append(SymbolSpec(self.symbol, self.weight, f"{what} {self.zone}{detail}",
                                    self.group))
        return specs

    # -- questions ---------------------------------------------------------------------

    def ip_query(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        return reverse_pointer(ip, self.zone)

    def domain_query(self, domain: str) -> str:
        return f"{domain}.{self.zone}"

    # -- answers -----------------------------------------------------------------------

    def interpret(self, answer: DNSAnswer) -> ZoneResult:
        if answer.is_failure:
            return ZoneResult(failure=f"{answer.status.value}{': ' if answer.error else ''}"
                              f"{answer.error}"[:120])
        if not answer.ok:
            return ZoneResult()  # NXDOMAIN / NODATA: not listed
        valid: list[ipaddress.IPv4Address] = []
        bogus: list[str] = []
        for record in answer.records:
            try:
                address = ipaddress.IPv4Address(record)
            except ValueError:
                bogus.append(record)
                continue
            if address not in LOOPBACK_V4:
                bogus.append(record)
            elif record in self.refusals:
                return ZoneResult(refused=record)
            else:
                valid.append(address)
        return ZoneResult(listings=self._listings(valid), bogus=tuple(bogus))

    def _listings(self, addresses: Iterable[ipaddress.IPv4Address]) -> tuple[Listing, ...]:
        found: dict[str, list[str]] = {}
        for address in addresses:
            matched = [code for code in self.codes if self._matches(code, int(address))]
            symbols = [code.symbol for code in matched]
            if not symbols and self.weight is not None:
                symbols = [self.symbol]
            for symbol in symbols:
                found.setdefault(symbol, []).append(str(address))
        return tuple(Listing(symbol, ",".join(codes)) for symbol, codes in found.items())

    def _matches(self, code: CodeRule, value: int) -> bool:
        if not self.bitmask:
            return code.address == value
        bits = code.address & _HOST_BITS
        return bits != 0 and value & bits == bits

    def is_listed_answer(self, answer: DNSAnswer) -> bool | None:
        """For probes: True listed, False not listed, None no usable answer. Any address
        in 127.0.0.0/8 counts, whether or not a code names it."""
        if answer.is_failure:
            return None
        if not answer.ok:
            return False
        return any(_in_loopback(record) for record in answer.records)


def _in_loopback(record: str) -> bool:
    try:
        return ipaddress.IPv4Address(record) in LOOPBACK_V4
    except ValueError:
        return False


# --- the sanity guard -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneSuspension:
    """A zone not used for now, and why (for logs, status pages and the web UI)."""

    zone: str
    kind: str
    reason: str
    since: float  # wall-clock time
    until: float  # wall-clock time


@dataclass(slots=True)
class _ZoneHealth:
    kind: str
    suspended_until: float = 0.0  # monotonic
    suspended_since_wall: float = 0.0
    reason: str = ""
    next_probe: float = 0.0  # monotonic; 0 = probe before the first use
    probe: asyncio.Task[None] | None = None
    last_bogus_log: float = field(default=-1e9)


class ZoneGuard:
    """Per-process health of every DNS list zone: suspensions and periodic probes."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._zones: dict[str, _ZoneHealth] = {}

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator]

    def _health(self, rule: ZoneRule) -> _ZoneHealth:
        health = self._zones.get(rule.zone)
        if health is None:
            health = self._zones[rule.zone] = _ZoneHealth(rule.kind.value)
        return health

    def usable(self, rule: ZoneRule) -> bool:
        """False while the zone is suspended; a suspension that ran out is lifted here
        (and the zone probed again before it scores)."""
        health = self._health(rule)
        if not health.suspended_until:
            return True
        if self._now() < health.suspended_until:
            return False
        log.warning("DNS list zone %s resumed after its suspension (%s)", rule.zone,
                    health.reason)
        health.suspended_until = 0.0
        health.reason = ""
        health.next_probe = 0.0
        metrics.DNSBL_ZONE_SUSPENDED.labels(rule.zone).set(0)
        notify.resolve_background("dnsbl_suspended", rule.zone)
        return True

    def suspend(self, rule: ZoneRule, reason: str, seconds: float) -> None:
        health = self._health(rule)
        if health.suspended_until and self._now() < health.suspended_until:
            return  # already suspended: one alert per suspension, not one per message
        health.suspended_until = self._now() + seconds
        health.suspended_since_wall = time.time()
        health.reason = reason
        log.error("DNS list zone %s (%s) suspended for %ds, not scoring: %s", rule.zone,
                  rule.kind.value, round(seconds), reason)
        metrics.DNSBL_ZONE_SUSPENDED.labels(rule.zone).set(1)
        notify.notify_background(
            "dnsbl_suspended", rule.zone, f"DNS list zone {rule.zone} suspended: {reason}",
            f"{rule.kind.value} zone {rule.zone} does not score for {round(seconds)} s.",
        )

    def note_bogus(self, rule: ZoneRule, records: Iterable[str]) -> None:
        """Answers outside 127.0.0.0/8 are ignored; say so at most once a minute."""
        health = self._health(rule)
        now = self._now()
        if now - health.last_bogus_log >= 60:
            health.last_bogus_log = now
            log.warning("DNS list zone %s answered outside 127.0.0.0/8 (%s): ignored as "
                        "bogus", rule.zone, ", ".join(records))

    def suspended(self) -> list[ZoneSuspension]:
        """The zones suspended now."""
        now = self._now()
        wall = time.time()
        return [
            ZoneSuspension(zone, health.kind, health.reason, health.suspended_since_wall,
                           wall + (health.suspended_until - now))
            for zone, health in sorted(self._zones.items())
            if health.suspended_until and now < health.suspended_until
        ]

    def retain(self, kinds: Iterable[ListKind], zones: Iterable[str]) -> None:
        """Forget zones of `kinds` no longer configured (after a reload), so a removed
        zone does not stay suspended on status pages and the gauge."""
        kept = set(zones)
        names = {kind.value for kind in kinds}
        for zone in [z for z, h in self._zones.items() if h.kind in names and z not in kept]:
            if self._zones[zone].suspended_until:
                metrics.DNSBL_ZONE_SUSPENDED.labels(zone).set(0)
            del self._zones[zone]

    def clear(self) -> None:
        """Forget every zone (tests; a changed resolver)."""
        for zone, health in self._zones.items():
            if health.suspended_until:
                metrics.DNSBL_ZONE_SUSPENDED.labels(zone).set(0)
        self._zones.clear()

    # -- probes ------------------------------------------------------------------------

    def probe(self, rule: ZoneRule, resolver: Resolver, interval: float,
              suspend_seconds: float) -> asyncio.Task[None] | None:
        """The zone's probe in flight, started if one is due (at most every `interval`
        seconds per zone); None when no probe is due or the zone is not probed."""
        if not rule.probe:
            return None
        health = self._health(rule)
        if health.probe is not None and not health.probe.done():
            return health.probe
        if self._now() < health.next_probe:
            return None
        health.next_probe = self._now() + interval
        task = asyncio.get_running_loop().create_task(
            self._run_probe(rule, resolver, suspend_seconds), name=f"probe {rule.zone}"
        )
        health.probe = task
        task.add_done_callback(_log_probe_crash)
        return task

    async def _run_probe(self, rule: ZoneRule, resolver: Resolver,
                         suspend_seconds: float) -> None:
        if rule.kind is ListKind.URIBL:
            listed_name = rule.domain_query(rule.probe_listed) if rule.probe_listed else None
            unlisted_name = (rule.domain_query(rule.probe_unlisted)
                             if rule.probe_unlisted else None)
            listed_what, unlisted_what = rule.probe_listed, rule.probe_unlisted
        else:
            listed_name = rule.ip_query(IP_PROBE_LISTED)
            unlisted_name = rule.ip_query(IP_PROBE_UNLISTED)
            listed_what, unlisted_what = str(IP_PROBE_LISTED), str(IP_PROBE_UNLISTED)
        names = [n for n in (listed_name, unlisted_name) if n]
        answers = dict(zip(names, await asyncio.gather(
            *(resolver.query(name, "A") for name in names)), strict=True))
        inconclusive = False
        for answer in answers.values():
            result = rule.interpret(answer)
            if result.refused is not None:
                self.suspend(rule, f"answered {result.refused} for its test entry: the "
                             "resolver is refused or rate-limited", suspend_seconds)
                return
            if result.failure is not None:
                inconclusive = True
        if unlisted_name and rule.is_listed_answer(answers[unlisted_name]):
            self.suspend(rule, f"lists {unlisted_what}, which must never be listed: the "
                         "zone lists everything", suspend_seconds)
            return
        if listed_name and rule.is_listed_answer(answers[listed_name]) is False:
            self.suspend(rule, f"does not list its test entry {listed_what}: the zone is "
                         "dead or misspelt", suspend_seconds)
            return
        if inconclusive:
            health = self._health(rule)
            health.next_probe = min(health.next_probe, self._now() + PROBE_RETRY_SECONDS)


def _log_probe_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("probe %s failed", task.get_name(), exc_info=task.exception())


GUARD = ZoneGuard()


def suspended_zones() -> list[ZoneSuspension]:
    """The DNS list zones this worker has suspended (for status pages and the UI)."""
    return GUARD.suspended()
