"""The shared resolver against a real authoritative server (NSD) and broken peers."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from appliance.config.schema import DNSSettings
from appliance.dns import DNSStatus, Resolver, reverse_pointer
from tests.support.dns_server import BEHAVIOURS, AuthoritativeDNS, BrokenDNS, txt_record

ZONE = "resolver.test"
LONG_TEXT = "v=DKIM1; k=rsa; p=" + "A" * 2800  # > 512 octets: only TCP carries it


@pytest.fixture(scope="module")
def zone(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zone(
        ZONE,
        [
            "host IN A 192.0.2.10",
            "host IN AAAA 2001:db8::10",
            "v4only IN A 192.0.2.11",
            "@ IN MX 20 mx2.resolver.test.",
            "@ IN MX 10 mx1.resolver.test.",
            "spf IN TXT " + txt_record("v=spf1 ip4:192.0.2.0/24 -all"),
            "split IN TXT ( \"v=spf1 \" \"-all\" )",
            "long IN TXT " + txt_record(LONG_TEXT),
            "empty IN TXT \"\"",
            "alias IN CNAME host.resolver.test.",
        ],
    )
    return dns_server


def resolver_for(server: AuthoritativeDNS | BrokenDNS, **settings: object) -> Resolver:
    return Resolver(DNSSettings(nameservers=[server.nameserver], **settings))


async def test_answers_by_type(zone: AuthoritativeDNS) -> None:
    resolver = resolver_for(zone)
    a = await resolver.query("HOST.resolver.test.", "A")
    assert (a.status, a.records, a.name) == (DNSStatus.OK, ("192.0.2.10",), "host.resolver.test")
    assert a.ttl == 60
    assert (await resolver.query("host.resolver.test", "AAAA")).records == ("2001:db8::10",)
    mx = await resolver.mx(ZONE)
    assert mx.mx_hosts() == [(10, "mx1.resolver.test"), (20, "mx2.resolver.test")]
    assert (await resolver.txt("spf.resolver.test")).records == ("v=spf1 ip4:192.0.2.0/24 -all",)
    # RFC 7208 3.3: the strings of one TXT record are concatenated without spaces.
    assert (await resolver.txt("split.resolver.test")).records == ("v=spf1 -all",)
    assert (await resolver.query("alias.resolver.test", "A")).records == ("192.0.2.10",)
    both = await resolver.addresses("host.resolver.test")
    assert set(both.records) == {"192.0.2.10", "2001:db8::10"}
    only = await resolver.addresses("v4only.resolver.test")
    assert only.ok and only.records == ("192.0.2.11",)


async def test_negative_answers_are_not_failures(zone: AuthoritativeDNS) -> None:
    resolver = resolver_for(zone)
    missing = await resolver.query("nothing.resolver.test", "A")
    assert missing.status is DNSStatus.NXDOMAIN and not missing.is_failure
    nodata = await resolver.query("v4only.resolver.test", "AAAA")
    assert nodata.status is DNSStatus.NODATA and not nodata.is_failure
    assert (await resolver.addresses("nothing.resolver.test")).status is DNSStatus.NXDOMAIN


async def test_answer_larger_than_udp_comes_over_tcp(zone: AuthoritativeDNS) -> None:
    answer = await resolver_for(zone).txt("long.resolver.test")
    assert answer.ok and answer.records == (LONG_TEXT,)


async def test_cache_serves_until_ttl_then_asks_again(dns_server: AuthoritativeDNS) -> None:
    origin = "ttl.resolver-cache.test"
    dns_server.set_zone(origin, ["x IN A 192.0.2.1", "gone IN A 192.0.2.2"])
    # The records' TTL is 60 s; max_ttl caps what the cache keeps at 2 s.
    resolver = resolver_for(dns_server, max_ttl=2)
    first = await resolver.query(f"x.{origin}")
    assert first.records == ("192.0.2.1",) and first.ttl == 2
    assert (await resolver.query(f"gone.{origin}")).ok
    cached_at = time.monotonic()
    dns_server.set_zone(origin, ["x IN A 192.0.2.99"])
    assert dns_server.resolve(f"x.{origin}") == ["192.0.2.99"]
    if time.monotonic() - cached_at < 1.5:  # a reload slower than that: nothing to see
        # Within the TTL the cached answer stands (the server already has the new one).
        assert (await resolver.query(f"x.{origin}")).records == ("192.0.2.1",)
        assert (await resolver.query(f"gone.{origin}")).ok
    await asyncio.sleep(max(0.0, cached_at + 2.2 - time.monotonic()))
    assert (await resolver.query(f"x.{origin}")).records == ("192.0.2.99",)
    assert (await resolver.query(f"gone.{origin}")).status is DNSStatus.NXDOMAIN


async def test_negative_answers_are_cached_by_soa_minimum(dns_server: AuthoritativeDNS) -> None:
    origin = "negative.resolver-cache.test"
    dns_server.set_zone(origin, ["present IN A 192.0.2.1"])
    resolver = resolver_for(dns_server, negative_ttl=900)
    assert (await resolver.query(f"later.{origin}")).status is DNSStatus.NXDOMAIN
    dns_server.set_zone(origin, ["present IN A 192.0.2.1", "later IN A 192.0.2.3"])
    # The zone's SOA minimum is 60 s: the NXDOMAIN is remembered.
    assert (await resolver.query(f"later.{origin}")).status is DNSStatus.NXDOMAIN
    resolver.clear_cache()
    answer = await resolver.query(f"later.{origin}")
    assert answer.records == ("192.0.2.3",), answer


async def test_concurrent_questions_share_one_query() -> None:
    with BrokenDNS("servfail") as server:
        resolver = resolver_for(server, error_ttl=0)
        answers = await asyncio.gather(*(resolver.query("same.test") for _ in range(20)))
    assert {a.status for a in answers} == {DNSStatus.SERVFAIL}
    assert server.queries == 1


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ("silent", DNSStatus.TIMEOUT),
        ("garbage", DNSStatus.TIMEOUT),
        ("short", DNSStatus.TIMEOUT),
        ("wrong_id", DNSStatus.TIMEOUT),
        ("truncated", DNSStatus.SERVFAIL),
        ("servfail", DNSStatus.SERVFAIL),
        ("refused", DNSStatus.SERVFAIL),
    ],
)
async def test_broken_servers_give_a_failure_status_in_time(
    behaviour: str, status: DNSStatus
) -> None:
    assert behaviour in BEHAVIOURS
    with BrokenDNS(behaviour) as server:
        resolver = resolver_for(server, timeout=0.3, lifetime=0.6)
        started = time.monotonic()
        answer = await resolver.query("anything.test", "TXT")
        elapsed = time.monotonic() - started
    assert answer.status is status and answer.is_failure and answer.error
    assert elapsed < 2.0


async def test_failures_are_remembered_briefly() -> None:
    with BrokenDNS("servfail") as server:
        resolver = resolver_for(server, error_ttl=30)
        await resolver.query("a.test")
        await resolver.query("a.test")
        assert server.queries == 1
        uncached = resolver_for(server, error_ttl=0)
        await uncached.query("a.test")
        await uncached.query("a.test")
        assert server.queries == 3


async def test_threads_ask_through_the_event_loop(zone: AuthoritativeDNS) -> None:
    resolver = resolver_for(zone)
    resolver.bind_loop()
    answer = await asyncio.to_thread(resolver.query_blocking, "spf.resolver.test", "TXT")
    assert answer.records == ("v=spf1 ip4:192.0.2.0/24 -all",)
    assert resolver.cached_entries() >= 1


async def test_reconfiguring_servers_clears_the_cache(zone: AuthoritativeDNS) -> None:
    resolver = resolver_for(zone)
    await resolver.query("host.resolver.test")
    resolver.configure(DNSSettings(nameservers=[zone.nameserver], timeout=1))
    assert resolver.cached_entries() == 1  # same servers: the cache stays
    with BrokenDNS("refused") as other:
        resolver.configure(DNSSettings(nameservers=[other.nameserver]))
        assert resolver.cached_entries() == 0


async def test_bad_names_are_errors_not_exceptions(zone: AuthoritativeDNS) -> None:
    resolver = resolver_for(zone)
    too_long = ".".join(["a" * 63] * 5)
    assert (await resolver.query(too_long)).status is DNSStatus.ERROR
    assert (await resolver.query("a..b.test")).status is DNSStatus.ERROR
    assert (await resolver.query("x.test", "NOTATYPE")).status is DNSStatus.ERROR


def test_reverse_pointer_names() -> None:
    assert reverse_pointer(ipaddress.ip_address("192.0.2.1"), "zen.example.") == (
        "1.2.0.192.zen.example"
    )
    assert reverse_pointer(ipaddress.ip_address("192.0.2.1")) == "1.2.0.192.in-addr.arpa"
    v6 = reverse_pointer(ipaddress.ip_address("2001:db8::1"), "bl.test")
    assert v6.startswith("1.0.0.0.") and v6.endswith(".8.b.d.0.1.0.0.2.bl.test")
    assert len(v6.split(".")) == 32 + 2
