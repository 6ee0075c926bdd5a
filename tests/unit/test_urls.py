"""URL host extraction and registered-domain reduction (appliance.urls)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from appliance.urls import (
    TargetCollector,
    domain_matches,
    iter_url_hosts,
    parse_authority,
    registered_domain,
)


def hosts(text: str, *, is_html: bool = False) -> list[str]:
    return [str(h) for h in iter_url_hosts(text, is_html=is_html)]


@pytest.mark.parametrize(("text", "expected"), [
    ("see http://Example.COM/path?q=1 now", ["example.com"]),
    ("https://www.example.org:8443/x", ["www.example.org"]),
    ("ftp://files.example.net/pub", ["files.example.net"]),
    ("visit www.shop.example today.", ["www.shop.example"]),
    ("end of sentence http://example.com, or http://example.net.", ["example.com",
                                                                     "example.net"]),
    ("http://bank.example@evil.example/login", ["evil.example"]),
    ("http://user:secret@evil.example:8080/", ["evil.example"]),
    ("http://%65vil.example/", ["evil.example"]),
    ("http://bücher.de/", ["xn--bcher-kva.de"]),
    ("http://192.0.2.1/a http://[2001:db8::1]:80/", ["192.0.2.1", "2001:db8::1"]),
    ("(http://paren.example/)", ["paren.example"]),
    ("mail me at bob@www.example.com", []),  # an address, not a URL
    ("http://example.com http://EXAMPLE.com/again", ["example.com"]),  # once
])
def test_hosts_in_plain_text(text: str, expected: list[str]) -> None:
    assert hosts(text) == expected


@pytest.mark.parametrize("text", [
    "http://", "http:///path", "https://-bad-.example/", "http://[::1", "http://a..b/",
    "http://exa mple.com", "http://999.999.999.999/", "ftp://:@/", "www.", "http://xn--/",
    "http://" + "x" * 300 + ".example/", "http://localhost/", "http://12345/",
    "hxxp://obfuscated.example/",  # out of scope by design
])
def test_malformed_urls_yield_nothing(text: str) -> None:
    assert hosts(text) == []


def test_html_attributes_and_entities() -> None:
    source = (
        '<a href="http://one.example/">x</a>'
        "<img src='//two.example/p.gif'>"
        '<a href="&#104;ttp://three.example/">y</a>'
        "<p>text link https://four.example/ &amp; more</p>"
        '<a href="/relative/path">z</a>'
    )
    assert hosts(source, is_html=True) == [
        "one.example", "two.example", "three.example", "four.example",
    ]
    # Protocol-relative links count only in HTML attributes.
    assert hosts("a // comment //two.example") == []


@pytest.mark.parametrize(("host", "expected"), [
    ("a.b.example.co.uk", "example.co.uk"),
    ("www.example.com", "example.com"),
    ("example.com", "example.com"),
    ("deep.sub.example.com.au", "example.com.au"),
    ("x.foo.blogspot.com", "blogspot.com"),  # ICANN section: the domain lists carry
    ("co.uk", None),  # a public suffix itself
    ("a.b.listed.test", "listed.test"),  # unknown TLD: one label below it
])
def test_registered_domain(host: str, expected: str | None) -> None:
    assert registered_domain(host) == expected


def test_private_suffixes_on_request() -> None:
    assert registered_domain("x.foo.blogspot.com", private_suffixes=True) == "foo.blogspot.com"


def test_domain_matches_itself_and_subdomains() -> None:
    entries = frozenset({"example.com"})
    assert domain_matches("example.com", entries)
    assert domain_matches("mail.example.com", entries)
    assert not domain_matches("badexample.com", entries)
    assert not domain_matches("example.com.evil.example", entries)


def test_collector_deduplicates_skips_and_caps() -> None:
    collector = TargetCollector(3, frozenset({"example.com", "w3.org"}))
    collector.add_text(
        "http://www.a.example/ http://b.a.example/ http://example.com/ http://x.example.com/ "
        "http://www.w3.org/ http://b.example/ http://1.2.3.4/ http://10.0.0.1/ "
        "http://c.example/ http://d.example/"
    )
    targets = collector.targets
    # a.example once; skip list and private IPs dropped; the cap of 3 stops at c.example.
    assert targets.domains == ["a.example", "b.example"]
    assert targets.ips == [ipaddress.ip_address("1.2.3.4")]
    assert targets.truncated


def test_collector_without_ips_counts_only_domains() -> None:
    collector = TargetCollector(2, collect_ips=False)
    collector.add_text("http://1.2.3.4/ http://a.example/ http://b.example/")
    assert collector.targets.domains == ["a.example", "b.example"]
    assert collector.targets.ips == [] and not collector.targets.truncated


def test_ten_thousand_urls_are_cheap_with_the_cap() -> None:
    text = "\n".join(f"http://d{i}.example/{i}" for i in range(10_000))
    collector = TargetCollector(20)
    started = time.perf_counter()
    collector.add_text(text)
    assert time.perf_counter() - started < 0.5
    assert len(collector.targets.domains) == 20 and collector.targets.truncated


def test_parse_authority_rejects_junk() -> None:
    assert parse_authority("[not-an-ip]") is None
    assert parse_authority("host") is None
    assert str(parse_authority("Example.COM.:25")) == "example.com"
