"""The one shared asynchronous DNS resolver of a worker, with its cache.

Every network check (DNSBL, URIBL, SPF, DKIM, DMARC, HELO, FCrDNS, sender validation)
asks through one `Resolver`, so an answer fetched for one check serves the others and
the next messages until its TTL runs out. Answers are plain values (`DNSAnswer`) with a
status instead of exceptions, because for a mail filter "no such name", "no data" and
"the server did not answer" are three different findings, not errors.

- Positive answers are cached for their TTL (clamped to `max_ttl`), NXDOMAIN and NODATA
  for the zone's negative TTL (RFC 2308: the SOA's minimum, capped by `negative_ttl`),
  and failures (timeout, SERVFAIL, malformed answers) briefly (`error_ttl`), so a dead
  server is not asked again by every session at once.
- Concurrent identical questions share one query in flight.
- Threads (pyspf, dkimpy run in threads) ask through `query_blocking`, which runs the
  query on the resolver's event loop: one cache, one set of counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from appliance import metrics
from appliance.config.schema import parse_nameserver

if TYPE_CHECKING:
    from appliance.config.schema import DNSSettings

__all__ = ["DNSAnswer", "DNSStatus", "Resolver", "parse_nameserver", "reverse_pointer"]

log = logging.getLogger("postwall.dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DNSStatus(StrEnum):
    OK = "ok"  # the name has records of the type asked
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, without records of that type
    TIMEOUT = "timeout"  # no server answered in time
    SERVFAIL = "servfail"  # every server failed or refused (SERVFAIL, REFUSED, ...)
    ERROR = "error"  # malformed or unusable answer, bad name

    @property
    def is_failure(self) -> bool:
        """True when the question has no answer at all (as opposed to a negative one)."""
        return self in (DNSStatus.TIMEOUT, DNSStatus.SERVFAIL, DNSStatus.ERROR)


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    name: str  # the name asked, lowercase, without the trailing dot
    rdtype: str  # "A", "TXT", ...
    status: DNSStatus
    records: tuple[str, ...] = ()  # A/AAAA addresses, TXT strings (joined), names (no dot)
    ttl: int = 0
    error: str = ""  # what went wrong, for failures

    @property
    def ok(self) -> bool:
        return self.status is DNSStatus.OK

    @property
    def is_failure(self) -> bool:
        return self.status.is_failure

    def mx_hosts(self) -> list[tuple[int, str]]:
        """(preference, host) pairs of an MX answer, best first."""
        pairs = []
        for record in self.records:
            preference, _, host = record.partition(" ")
            with contextlib.suppress(ValueError):
                pairs.append((int(preference), host))
        return sorted(pairs)


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def reverse_pointer(ip: IPAddress, zone: str = "") -> str:
    """The DNSBL-style query name of `ip` (`2.0.0.127.zone`, nibbles for IPv6), or its
    in-addr.arpa/ip6.arpa name when `zone` is empty."""
    if not zone:
        return dns.reversename.from_address(str(ip)).to_text(omit_final_dot=True)
    if isinstance(ip, ipaddress.IPv4Address):
        labels = str(ip).split(".")
    else:
        labels = list(ip.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + normalize_name(zone)


def _record_text(rdata: object, rdtype: int) -> str:
    if rdtype == dns.rdatatype.TXT:
        # A TXT record is a list of character-strings that RFC 7208/6376 concatenate.
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.MX:
        exchange = rdata.exchange.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
        return f"{rdata.preference} {exchange}"  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return rdata.target.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
    return rdata.to_text()  # type: ignore[attr-defined]


def _negative_ttl(response: dns.message.Message | None, cap: int) -> int:
    """RFC 2308: a negative answer lives as long as the SOA's TTL and minimum allow."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return max(0, min(rrset.ttl, rrset[0].minimum, cap))
    return cap


class Resolver:
    """Cached asynchronous lookups; one instance per worker, shared by all checks."""

    def __init__(self, settings: DNSSettings) -> None:
        self._cache: OrderedDict[tuple[str, int], tuple[float, DNSAnswer]] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Future[DNSAnswer]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.configure(settings)

    def configure(self, settings: DNSSettings) -> None:
        """Apply (new) settings; the cache survives unless the servers changed."""
        try:
            resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        except dns.resolver.NoResolverConfiguration:
            log.warning("no nameserver in /etc/resolv.conf and none in dns.nameservers: "
                        "asking 127.0.0.1")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
        if settings.nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in map(parse_nameserver, settings.nameservers)
            ]
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.lifetime
        resolver.cache = None  # our own cache also keeps negative answers and failures
        servers = [
            f"{getattr(ns, 'address', ns)}:{getattr(ns, 'port', 53)}" for ns in resolver.nameservers
        ]
        if servers != getattr(self, "nameservers", servers):
            self._cache.clear()
        self._resolver = resolver
        self.nameservers = servers
        self.settings = settings

    # -- asking ---------------------------------------------------------------------

    async def query(self, name: str, rdtype: str = "A") -> DNSAnswer:
        """The answer for (`name`, `rdtype`), from the cache while it is fresh."""
        self._loop = asyncio.get_running_loop()
        name = normalize_name(name)
        try:
            type_code = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return DNSAnswer(name, rdtype, DNSStatus.ERROR, error=f"unknown type {rdtype}")
        key = (name, type_code)
        cached = self._cache.get(key)
        if cached is not None:
            expires, answer = cached
            if expires > time.monotonic():
                self._cache.move_to_end(key)
                metrics.DNS_CACHE.labels("hit").inc()
                return answer
            del self._cache[key]
        metrics.DNS_CACHE.labels("miss").inc()
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[DNSAnswer] = self._loop.create_future()
        self._inflight[key] = future
        try:
            answer, ttl = await self._ask(name, type_code)
            self._store(key, answer, ttl)
            future.set_result(answer)
            return answer
        except BaseException as exc:  # cancelled: let the waiters ask again
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]

    async def _ask(self, name: str, type_code: int) -> tuple[DNSAnswer, float]:
        rdtype = dns.rdatatype.to_text(type_code)
        settings = self.settings
        try:
            result = await self._resolver.resolve(
                name, type_code, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            response = exc.responses().get(dns.name.from_text(name)) if exc.kwargs else None
            answer = DNSAnswer(name, rdtype, DNSStatus.NXDOMAIN)
            return self._count(answer), _negative_ttl(response, settings.negative_ttl)
        except dns.resolver.LifetimeTimeout as exc:
            answer = DNSAnswer(name, rdtype, DNSStatus.TIMEOUT, error=str(exc)[:200])
            return self._count(answer), settings.error_ttl
        except dns.resolver.NoNameservers as exc:
            answer = DNSAnswer(name, rdtype, DNSStatus.SERVFAIL, error=str(exc)[:200])
            return self._count(answer), settings.error_ttl
        except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
            # Malformed names or answers, truncation that TCP could not repair, ...
            answer = DNSAnswer(name, rdtype, DNSStatus.ERROR, error=f"{type(exc).__name__}: "
                               f"{str(exc)[:200]}")
            return self._count(answer), settings.error_ttl
        if result.rrset is None:
            answer = DNSAnswer(name, rdtype, DNSStatus.NODATA)
            return self._count(answer), _negative_ttl(result.response, settings.negative_ttl)
        records = tuple(_record_text(rdata, type_code) for rdata in result.rrset)
        ttl = min(result.rrset.ttl, settings.max_ttl)
        return self._count(DNSAnswer(name, rdtype, DNSStatus.OK, records, ttl)), ttl

    @staticmethod
    def _count(answer: DNSAnswer) -> DNSAnswer:
        metrics.DNS_QUERIES.labels(answer.rdtype, answer.status.value).inc()
        if answer.is_failure:
            log.debug("DNS %s %s: %s %s", answer.rdtype, answer.name, answer.status, answer.error)
        return answer

    def _store(self, key: tuple[str, int], answer: DNSAnswer, ttl: float) -> None:
        if ttl <= 0 or self.settings.cache_size == 0:
            return
        self._cache[key] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)

    def query_blocking(self, name: str, rdtype: str = "A", timeout: float | None = None
                       ) -> DNSAnswer:
        """`query` for code running in a worker thread (pyspf, dkimpy): the lookup runs on
        the resolver's event loop. Never call this from the event loop's own thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the resolver has not been used from an event loop yet")
        future: Future[DNSAnswer] = asyncio.run_coroutine_threadsafe(
            self.query(name, rdtype), loop
        )
        return future.result(timeout if timeout is not None else self.settings.lifetime + 1)

    def bind_loop(self) -> None:
        """Remember the running loop, so threads can ask before the first async query."""
        self._loop = asyncio.get_running_loop()

    # -- conveniences ---------------------------------------------------------------

    async def addresses(self, name: str) -> DNSAnswer:
        """A and AAAA together: OK with every address, or the A lookup's failure."""
        a, aaaa = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        if a.ok or aaaa.ok:
            records = a.records + aaaa.records
            ttl = min(x.ttl for x in (a, aaaa) if x.ok)
            return DNSAnswer(a.name, "A+AAAA", DNSStatus.OK, records, ttl)
        if a.is_failure:
            return a
        return aaaa if aaaa.is_failure else a

    async def txt(self, name: str) -> DNSAnswer:
        return await self.query(name, "TXT")

    async def mx(self, name: str) -> DNSAnswer:
        return await self.query(name, "MX")

    async def ptr(self, ip: IPAddress) -> DNSAnswer:
        return await self.query(reverse_pointer(ip), "PTR")

    def cached_entries(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()


def matches_any(answer: DNSAnswer, networks: Sequence[ipaddress.IPv4Network]) -> bool:
    """True when one of the addresses in an A answer lies in one of `networks`."""
    for record in answer.records:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(record)
            if any(address in network for network in networks):
                return True
    return False
