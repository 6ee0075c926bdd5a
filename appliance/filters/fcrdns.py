"""Forward-confirmed reverse DNS of the client: looked up from connect, judged at MAIL.

The PTR name of the client's address is looked up, then the addresses of each PTR name
(up to `max_names`); the client is confirmed when one of them is its own address. A PTR
name alone proves nothing (whoever owns the address block writes it); one that resolves
back was also written by the owner of the forward zone. Real mail servers have one;
infected end-user machines mostly have none, or a generic name of their access network
(`1-2-3-4.dyn.isp.example`).

When: `FCrDNSPrefetch` (connect stage, after the IP lists) only starts the lookups and
lets the greeting go out at once; `FCrDNSFilter` (mail stage, after the sender lists)
runs the same lookups, which by then come from the resolver's cache or join the queries
still in flight (the pattern of the DNSBL check). A slow or lame reverse zone, common
for spam sources, so never holds the greeting; it costs the session at most the
filter's timeout at MAIL FROM. The result is kept on the connection (`ptr_name`,
`fcrdns`) for later checks and our Received header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from appliance.config.schema import FCrDNSSettings
from appliance.context import IPAddress, TransactionContext
from appliance.dns import DNSAnswer, DNSStatus
from appliance.domains import printable, resolves_to
from appliance.filters.base import Filter
from appliance.patterns import PatternSet
from appliance.verdict import NO_FINDINGS, Stage, Symbol, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.dns import Resolver

GROUP = "rdns"
_DIGIT_RUNS = re.compile(r"[0-9]+")


def embeds_ipv4(name: str, ip: IPAddress) -> bool:
    """True when `name` spells out all four octets of `ip` in order or reversed
    (1-2-3-4.pool.example, host.4.3.2.1.isp.example, ec2-1-2-3-4.compute.example) or as
    twelve zero-padded digits (001002003004.isp.example)."""
    if not isinstance(ip, ipaddress.IPv4Address):
        return False
    octets = list(ip.packed)
    wanted = (octets, octets[::-1])
    runs = _DIGIT_RUNS.findall(name)
    numbers = [int(run) if len(run) <= 3 else -1 for run in runs]
    for start in range(len(numbers) - 3):
        if numbers[start : start + 4] in wanted:
            return True
    padded = {"".join(f"{o:03d}" for o in seq) for seq in wanted}
    return any(run in padded for run in runs)


class DynamicNames:
    """Recognises generic, dynamically assigned host names (pure; compiled once)."""

    def __init__(self, patterns: list[str], embedded_ip: bool) -> None:
        self.patterns = PatternSet(patterns)
        self.embedded_ip = embedded_ip

    def reason(self, name: str, ip: IPAddress) -> str | None:
        """Why `name` looks dynamic, or None."""
        if self.embedded_ip and embeds_ipv4(name, ip):
            return f"{name} embeds {ip}"
        if self.patterns:
            found = self.patterns.search_first([name])
            if found is not None:
                return f"{name} matches {found[1].group(0)!r}"
        return None


@dataclass(frozen=True, slots=True)
class ReverseDNS:
    """What DNS says about a client address: its PTR answer, the PTR names asked about
    (at most max_names) with their A/AAAA answers, and the first name that resolves back
    to the address."""

    ptr: DNSAnswer
    names: tuple[str, ...] = ()
    forward: tuple[DNSAnswer, ...] = ()
    confirmed: str | None = None


async def reverse_lookup(resolver: Resolver, ip: IPAddress, max_names: int) -> ReverseDNS:
    ptr = await resolver.ptr(ip)
    if not ptr.ok:
        return ReverseDNS(ptr)
    # Order kept, duplicates and the root name dropped, at most max_names asked.
    names = tuple(n for n in dict.fromkeys(ptr.records) if n and n != ".")[:max_names]
    forward = tuple(await asyncio.gather(*(resolver.addresses(n) for n in names)))
    confirmed = next(
        (n for n, answer in zip(names, forward, strict=True)
         if answer.ok and resolves_to(answer.records, ip)),
        None,
    )
    return ReverseDNS(ptr, names, forward, confirmed)


class FCrDNSPrefetch(Filter):
    """Starts the reverse and forward lookups at connect without waiting for them; it
    emits no symbols and never delays the greeting."""

    name: ClassVar[str] = "fcrdns_prefetch"
    section: ClassVar[str] = "fcrdns"
    stage: ClassVar[Stage] = Stage.CONNECT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = ()

    settings: FCrDNSSettings

    def setup(self) -> None:
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._pending: set[asyncio.Task[ReverseDNS]] = set()

    async def check(self, ctx: TransactionContext) -> Verdict:
        conn = ctx.connection
        resolver = self.services.resolver
        if conn.is_relay or resolver is None:
            return NO_FINDINGS
        task = asyncio.get_running_loop().create_task(
            reverse_lookup(resolver, conn.peer_ip, self.settings.max_names)
        )
        self._pending.add(task)
        task.add_done_callback(self._finished)
        return NO_FINDINGS

    def _finished(self, task: asyncio.Task[ReverseDNS]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # answers carry failures as statuses; this only marks it seen


class FCrDNSFilter(Filter):
    name: ClassVar[str] = "fcrdns"
    stage: ClassVar[Stage] = Stage.MAIL
    waits_on_network: ClassVar[bool] = True
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("RDNS_NONE", 1.5, "The client's address has no PTR (reverse DNS) name",
                   GROUP),
        SymbolSpec("RDNS_NOT_CONFIRMED", 1.0,
                   "No PTR name of the client resolves back to its address (no FCrDNS)",
                   GROUP),
        SymbolSpec("RDNS_DYNAMIC", 1.5,
                   "The client's PTR name looks generic or dynamically assigned", GROUP),
        SymbolSpec("RDNS_TEMPERROR", 0.0,
                   "The reverse or forward DNS lookup of the client failed", GROUP),
    )

    settings: FCrDNSSettings

    def setup(self) -> None:
        self._dynamic = DynamicNames(
            list(self.settings.dynamic_patterns), self.settings.dynamic_embedded_ip
        )

    async def check(self, ctx: TransactionContext) -> Verdict:
        conn = ctx.connection
        if conn.is_relay:
            return NO_FINDINGS
        resolver = self.services.resolver
        if resolver is None:
            raise RuntimeError("no DNS resolver")
        ip = conn.peer_ip
        found = await reverse_lookup(resolver, ip, self.settings.max_names)
        ptr = found.ptr
        if ptr.status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA) or (ptr.ok and not found.names):
            conn.fcrdns = False
            why = ptr.status.value if not ptr.ok else "empty PTR"
            return self.found(self.hit("RDNS_NONE", f"{ip}: {why}"))
        if not ptr.ok:
            return self.found(self.hit("RDNS_TEMPERROR", f"PTR {ip}: {ptr.status.value}"))
        symbols: list[Symbol] = []
        if found.confirmed is not None:
            conn.ptr_name, conn.fcrdns = found.confirmed, True
        else:
            conn.ptr_name = found.names[0]
            symbols.append(self._unconfirmed(found, ip))
            if symbols[0].name == "RDNS_NOT_CONFIRMED":
                conn.fcrdns = False
        dynamic = self._dynamic.reason(conn.ptr_name, ip)
        if dynamic is not None:
            symbols.append(self.hit("RDNS_DYNAMIC", printable(dynamic, 190)))
        return self.found(*symbols)

    def _unconfirmed(self, found: ReverseDNS, ip: IPAddress) -> Symbol:
        if all(answer.is_failure for answer in found.forward):
            first = found.forward[0]
            return self.hit("RDNS_TEMPERROR", f"A/AAAA {found.names[0]}: {first.status.value}")
        shown = []
        for name, answer in zip(found.names, found.forward, strict=True):
            result = ",".join(answer.records[:3]) if answer.ok else answer.status.value
            shown.append(f"{name} -> {result}")
        return self.hit("RDNS_NOT_CONFIRMED", printable(f"{ip}: " + "; ".join(shown), 190))
