"""The client's IP address in DNS blocklists (DNSBL) and allow lists (DNSWL).

When: the address is known at connect, but the verdict is read at MAIL FROM.
`DNSBLPrefetch` (connect stage, after the IP allow/deny lists) only *starts* the lookups
and any due sanity probes, then lets the greeting go out at once; `DNSBLFilter` (mail
stage, after the sender white/black lists) asks the same questions, which by then are
answered from the resolver's cache or join the queries still in flight. So:

- the lookups overlap the greeting and the client's EHLO, and usually cost the session
  no waiting at all;
- an `ip_allow`-listed client is never looked up, and a whitelisted or noprocessing
  sender skips the verdict (and its scoring) like every other check of its stage;
- the result scores every transaction of the session from MAIL on, and a refusal in
  block mode comes as `554 5.7.1` to MAIL FROM, before any recipient is relayed.

Each listing is one symbol declared from the configuration: `DNSBL_<label>` (group
"dnsbl", capped by scoring.group_caps.dnsbl; the penalty box counts this group) or
`DNSBL_<label>_<code label>` for a configured return code, and `DNSWL_...` (group
"dnswl", zero or negative weights). The reason names the address, the zone and the code:
`DNSBL_ZEN_SBL +4 "203.0.113.9 in zen.spamhaus.org (127.0.0.2)"`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING, ClassVar

from appliance.config.schema import DNSBLSettings
from appliance.dnslists import GUARD, ListKind, ZoneRule
from appliance.filters.base import Filter
from appliance.filters.dnslist_base import DNSListFilter, Question, zone_rules
from appliance.verdict import NO_FINDINGS, Reply, Stage, Symbol, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.config.schema import FilterSettings
    from appliance.context import TransactionContext
    from appliance.dns import DNSAnswer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_rules(settings: FilterSettings) -> tuple[ZoneRule, ...]:
    assert isinstance(settings, DNSBLSettings)
    return (*zone_rules(settings.zones, ListKind.DNSBL),
            *zone_rules(settings.dnswl_zones, ListKind.DNSWL))


def should_look_up(ip: IPAddress, settings: DNSBLSettings) -> bool:
    """Public lists know only global addresses; the rest is skipped unless asked for."""
    return settings.check_private or ip.is_global


def blocked_reply(ip: IPAddress, zones: str) -> Reply:
    return Reply(554, "5.7.1", f"Service unavailable; client host [{ip}] blocked using "
                 f"{zones}")


class DNSBLFilter(DNSListFilter):
    name: ClassVar[str] = "dnsbl"
    stage: ClassVar[Stage] = Stage.MAIL

    @classmethod
    def rules_for(cls, settings: FilterSettings) -> tuple[ZoneRule, ...]:
        return client_rules(settings)

    @classmethod
    def kinds(cls) -> tuple[ListKind, ...]:
        return (ListKind.DNSBL, ListKind.DNSWL)

    async def check(self, ctx: TransactionContext) -> Verdict:
        settings = self.settings
        assert isinstance(settings, DNSBLSettings)
        ip = ctx.connection.peer_ip
        if not self.rules or not should_look_up(ip, settings):
            return NO_FINDINGS
        resolver = self.resolver()
        rules = self.usable_rules()
        probes = self.start_probes(rules, resolver)
        questions = [Question(rule, rule.ip_query(ip), str(ip)) for rule in rules]
        symbols: list[Symbol] = []
        failures: list[str] = []
        listed_in: list[str] = []
        for question, result in await self.ask(questions, resolver, probes):
            rule = question.rule
            if result.failure is not None:
                failures.append(f"{rule.zone}: {result.failure}")
                continue
            for listing in result.listings:
                symbols.append(self.hit(listing.symbol, f"{ip} in {rule.zone} ({listing.code})"))
            if result.listed and rule.kind is ListKind.DNSBL:
                listed_in.append(rule.zone)
        if failures:
            symbols.append(self.failed_zones(ctx, failures))
        return self.judged(symbols, lambda _: blocked_reply(ip, ", ".join(listed_in)))


class DNSBLPrefetch(Filter):
    """Starts the client's DNSBL/DNSWL lookups at connect without waiting for them; see
    the module docstring. It emits no symbols and never delays the greeting."""

    name: ClassVar[str] = "dnsbl_prefetch"
    section: ClassVar[str] = "dnsbl"
    stage: ClassVar[Stage] = Stage.CONNECT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = ()

    def setup(self) -> None:
        self.rules = client_rules(self.settings)
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._pending: set[asyncio.Task[DNSAnswer]] = set()

    async def check(self, ctx: TransactionContext) -> Verdict:
        settings = self.settings
        assert isinstance(settings, DNSBLSettings)
        resolver = self.services.resolver
        ip = ctx.connection.peer_ip
        if resolver is None or not self.rules or not should_look_up(ip, settings):
            return NO_FINDINGS
        loop = asyncio.get_running_loop()
        for rule in self.rules:
            if not GUARD.usable(rule):
                continue
            GUARD.probe(rule, resolver, settings.probe_interval, settings.suspend_seconds)
            task = loop.create_task(resolver.query(rule.ip_query(ip), "A"))
            self._pending.add(task)
            task.add_done_callback(self._finished)
        return NO_FINDINGS

    def _finished(self, task: asyncio.Task[DNSAnswer]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # answers carry failures as statuses; this only marks it seen
