"""URIBL through the real proxy, Postfix and an authoritative DNS server (NSD).

The test list `multi.uribl.test` answers like multi.uribl.com: bits 2 (black) and 4
(grey) of the last octet, and lists RFC 5782's TEST entry, so its probe passes.
"""

from __future__ import annotations

import base64
import quopri
import re
import time
import urllib.request
from email.message import EmailMessage
from typing import Any

import pytest

from tests.support.dns_server import AuthoritativeDNS
from tests.support.smtpclient import send_message

MULTI = "multi.uribl.test"
EVERYTHING = "everything.uribl.test"

ZONES = {
    MULTI: [
        "test IN A 127.0.0.2",  # RFC 5782 test entry: the probe wants it listed
        "black.example IN A 127.0.0.2",
        "grey.example IN A 127.0.0.4",
        "both.example IN A 127.0.0.6",
        "example.co.uk IN A 127.0.0.2",
        "d5.example IN A 127.0.0.2",
        "d500.example IN A 127.0.0.2",
        "4.3.2.1 IN A 127.0.0.2",  # the IP-literal URL http://1.2.3.4/
        "partner.example IN A 127.0.0.2",  # listed, but one of our skip domains
    ],
    EVERYTHING: ["* IN A 127.0.0.2"],
}

MULTI_ZONE = {
    "zone": MULTI,
    "label": "MULTI",
    "bitmask": True,
    "weight": None,
    "ips": True,
    "codes": {
        "127.0.0.2": {"label": "BLACK", "weight": 6},
        "127.0.0.4": {"label": "GREY", "weight": 1.5},
    },
}


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zones(ZONES)
    return dns_server


def uribl_config(dns: AuthoritativeDNS, **uribl: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"mode": "score", "zones": [MULTI_ZONE],
                                "skip_domains": ["partner.example"]}
    settings.update(uribl)
    return {"dns": {"nameservers": [dns.nameserver]}, "filters": {"uribl": settings},
            "scoring": {"thresholds": {"reject": 50}}}


def plain(subject: str, body: str) -> bytes:
    return (
        f"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject))}@partner.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def encoded(subject: str, text: str, subtype: str, cte: str) -> bytes:
    data = text.encode()
    body = (base64.encodebytes(data) if cte == "base64" else quopri.encodestring(data))
    return (
        f"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        f"--b1\r\nContent-Type: text/plain\r\n\r\nnothing to see\r\n"
        f"--b1\r\nContent-Type: text/{subtype}; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n") + b"\r\n--b1--\r\n"


def send(proxy, content: bytes):
    host, port = proxy.inbound
    return send_message(host, port, content, mail_from="alice@partner.example",
                        rcpt_tos=["bob@example.com"])


def symbols_of(found) -> dict[str, float]:
    header = (found.header("X-Spam-Symbols") or "").replace("\r\n", "").replace("\t", " ")
    pairs = (item.strip().partition("=") for item in header.split(",") if item.strip())
    return {name: float(score) for name, _, score in pairs}


def uribl_symbols(recorded, subject: str) -> dict[str, float]:
    [found] = recorded.wait_for_match(header="Subject", value=subject)
    return {k: v for k, v in symbols_of(found).items() if k.startswith("URIBL")}


def dns_queries_sent(proxy) -> float:
    host, port = proxy.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^postwall_dns_queries_total\{rdtype="A",status="[a-z]+"\} (\S+)$', text, re.M))


def test_listed_domains_in_text_html_and_encoded_parts(zones, proxy_factory, recorded):
    proxy = proxy_factory(uribl_config(zones))
    html = ('<html><body><p>Offer!</p><a href="http://www.black.example/buy?x=1">buy</a>'
            '<img src="//cdn.grey.example/pixel.gif"></body></html>')
    # A quoted-printable soft line break inside the URL, and entity-encoded HTML.
    long_url = "https://" + "a" * 40 + ".black.example/" + "p" * 80
    messages = {
        "plain text": plain("plain text", "Visit http://black.example/offer now"),
        "bare www": plain("bare www", "Visit www.grey.example today."),
        "html href": encoded("html href", html, "html", "base64"),
        "entities": encoded("entities", '<a href="&#104;ttp://both.example/">x</a>', "html",
                            "quoted-printable"),
        "qp soft break": encoded("qp soft break", f"see {long_url} ok", "plain",
                                 "quoted-printable"),
        "public suffix": plain("public suffix", "http://a.b.example.co.uk/x"),
        "ip literal": plain("ip literal", "http://1.2.3.4/login"),
        "clean": plain("clean", "http://clean.example/ and http://partner.example/ and "
                       "mail bob@black.example (an address, not a URL)"),
    }
    for content in messages.values():
        assert send(proxy, content).accepted
    black, grey = "URIBL_MULTI_BLACK", "URIBL_MULTI_GREY"
    assert uribl_symbols(recorded, "plain text") == {black: 6}
    assert uribl_symbols(recorded, "bare www") == {grey: 1.5}
    assert uribl_symbols(recorded, "html href") == {black: 6, grey: 1.5}
    assert uribl_symbols(recorded, "entities") == {black: 6, grey: 1.5}  # 127.0.0.6 = 2|4
    assert uribl_symbols(recorded, "qp soft break") == {black: 6}
    assert uribl_symbols(recorded, "public suffix") == {black: 6}
    assert uribl_symbols(recorded, "ip literal") == {black: 6}
    assert uribl_symbols(recorded, "clean") == {}


def test_ten_thousand_urls_respect_the_lookup_cap(zones, proxy_factory, recorded):
    proxy = proxy_factory(uribl_config(zones, max_lookups=20))
    body = "\r\n".join(f"http://d{i}.example/path/{i}" for i in range(10_000))
    content = plain("ten thousand", body)
    assert len(content) > 250_000
    before = dns_queries_sent(proxy)
    started = time.monotonic()
    assert send(proxy, content).accepted
    elapsed = time.monotonic() - started
    symbols = uribl_symbols(recorded, "ten thousand")
    # d5 is among the first 20 domains and listed; d500 is listed too, but past the cap.
    assert symbols == {"URIBL_MULTI_BLACK": 6, "URIBL_LOOKUP_LIMIT": 0}
    asked = dns_queries_sent(proxy) - before
    assert asked <= 20 + 2, asked  # 20 domains in one zone, plus the zone's two probes
    assert elapsed < 10, elapsed


def test_malformed_urls_are_skipped_and_mail_flows(zones, proxy_factory, recorded):
    proxy = proxy_factory(uribl_config(zones))
    junk = "\r\n".join([
        "http://", "https://-bad-.example/", "http://[::1", "http://%zz%/", "http://a..b/",
        "http://" + "x" * 5000 + ".example/", "http://exa mple.com", "http://\u2603.\u2603/",
        "http://999.999.999.999/", "ftp://:@/", "http://black.example:99999999/",
        "www.", "http://127.0.0.1/", "http://[2001:db8::1]/", "http://xn--/",
    ])
    assert send(proxy, plain("junk urls", junk)).accepted
    symbols = uribl_symbols(recorded, "junk urls")
    # Only the one well-formed listed host (with a silly port) counts; nothing failed.
    assert symbols == {"URIBL_MULTI_BLACK": 6}
    assert "URIBL_ERROR" not in symbols
    assert send(proxy, plain("after junk", "http://grey.example/")).accepted
    assert uribl_symbols(recorded, "after junk") == {"URIBL_MULTI_GREY": 1.5}


def test_block_mode_refuses_at_data_and_a_wildcard_zone_is_suspended(
    zones, proxy_factory, recorded
):
    everything = {"zone": EVERYTHING, "label": "ALL", "weight": 9}
    proxy = proxy_factory(uribl_config(zones, mode="block", reject_score=5,
                                       zones=[MULTI_ZONE, everything]))
    result = send(proxy, plain("blocked", "http://black.example/"))
    assert (result.data.code, result.data.enhanced) == (554, "5.7.1"), result.data
    assert f"black.example, listed in {MULTI}" in result.data.text
    # The wildcard zone lists INVALID: suspended by its probe, it scores nothing.
    assert send(proxy, plain("grey only", "http://grey.example/")).accepted
    assert uribl_symbols(recorded, "grey only") == {"URIBL_MULTI_GREY": 1.5}
    assert "lists invalid, which must never be listed" in proxy.stderr_text()


def test_html_part_built_by_the_email_package(zones, proxy_factory, recorded):
    """A message as a mail client builds it: text and HTML alternatives."""
    proxy = proxy_factory(uribl_config(zones))
    msg = EmailMessage()
    msg["From"] = "alice@partner.example"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "alternatives"
    msg.set_content("Plain version without links.")
    msg.add_alternative('<p>Click <a href="https://shop.both.example/">here</a></p>',
                        subtype="html")
    assert send(proxy, msg.as_bytes().replace(b"\n", b"\r\n")).accepted
    assert uribl_symbols(recorded, "alternatives") == {
        "URIBL_MULTI_BLACK": 6, "URIBL_MULTI_GREY": 1.5,
    }
