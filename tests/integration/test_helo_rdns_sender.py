"""HELO validation, FCrDNS and sender validation through the real proxy, with a real NSD
answering the DNS questions and the real Postfix relaying what is accepted.

The client connects from several loopback addresses (127.0.0.5, .6, ...: every 127/8
address is local on Linux) so that each one has its own reverse DNS in the test zone
0.0.127.in-addr.arpa. `relay_networks` is narrowed to 127.0.0.254, so the other loopback
clients count as outside.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dns_server import AuthoritativeDNS, BrokenDNS
from tests.support.smtpclient import SMTPClient, send_message

OURS = "127.0.0.254"  # the only address in relay_networks
REVERSE = "0.0.127.in-addr.arpa"


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zones({
        REVERSE: [
            "5 IN PTR mail.fcrdns.test.",
            "6 IN PTR liar.fcrdns.test.",
            "7 IN PTR 127-0-0-7.dyn.isp.fcrdns.test.",
            # 8 has no PTR
            "9 IN PTR host.unserved.example.",  # a name no server answers for
            "10 IN PTR first.fcrdns.test.",
            "10 IN PTR second.fcrdns.test.",
            "11 IN PTR dhcp-pool.fcrdns.test.",
        ],
        "fcrdns.test": [
            "mail IN A 127.0.0.5",
            "liar IN A 127.0.0.99",
            "127-0-0-7.dyn.isp IN A 127.0.0.7",
            "first IN A 127.0.0.99",
            "second IN A 127.0.0.10",
            "dhcp-pool IN A 127.0.0.11",
        ],
        "helo-checks.test": [
            "exists IN A 127.0.0.1",
            "elsewhere IN A 192.0.2.50",
            "v6only IN AAAA 2001:db8::50",
        ],
        "sender-checks.test": [
            "mx IN MX 10 mail.mx.sender-checks.test.",
            "mail.mx IN A 192.0.2.25",
            "aonly IN A 192.0.2.26",
            "v6only IN AAAA 2001:db8::26",
            "nullmx IN MX 0 .",
            "nothing IN TXT \"v=spf1 -all\"",
        ],
    })
    return dns_server


def settings(nameserver: str, **filters: Any) -> dict[str, Any]:
    return {
        "dns": {"nameservers": [nameserver], "timeout": 1, "lifetime": 2},
        "relay_networks": [f"{OURS}/32"],
        # The untrained classifier's BAYES_UNSURE would be in every X-Spam-Symbols.
        "filters": {"bayes": {"mode": "off"}, **filters},
    }


def message(subject: str, sender: str = "alice@partner.example") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@partner.example>\r\n"
        "\r\nHello.\r\n"
    ).encode()


def symbols_of(recorded_message: Any) -> dict[str, float]:
    value = recorded_message.header("X-Spam-Symbols") or ""
    pairs = (item.strip().partition("=") for item in value.split(",") if item.strip())
    return {name: float(score) for name, _, score in pairs}


def deliver(proxy: Any, recorded: Any, subject: str, *, sender: str = "alice@mx.sender-checks.test",
            helo: str = "exists.helo-checks.test", source: str | None = None) -> Any:
    """Send one message that must be accepted; return it as the recorder got it."""
    result = send_message(*proxy.inbound, message(subject, sender), mail_from=sender,
                          rcpt_tos=["bob@example.com"], helo=helo, source=source)
    assert result.accepted, f"{subject}: {result.final}"
    [arrived] = recorded.wait_for_match(header="Subject", value=subject)
    return arrived


def with_prefix(symbols: dict[str, float], prefix: str) -> set[str]:
    return {name for name in symbols if name.startswith(prefix)}


# --------------------------------------------------------------------------------------
# HELO
# --------------------------------------------------------------------------------------

HELO_CASES = [
    # (HELO, client address, HELO symbols expected)
    ("exists.helo-checks.test", None, set()),
    ("[127.0.0.1]", None, set()),
    ("[127.0.0.5]", "127.0.0.5", set()),
    ("postwall.test", None, {"HELO_FORGED"}),  # our smtp.hostname
    ("example.com", None, {"HELO_FORGED"}),  # a local domain
    ("mx.example.com", None, {"HELO_FORGED"}),  # a name under one
    ("[127.0.0.9]", None, {"HELO_LITERAL_MISMATCH"}),
    ("[127.0.0.1]", "127.0.0.5", {"HELO_FORGED", "HELO_LITERAL_MISMATCH"}),  # our listener
    ("127.0.0.1", None, {"HELO_BARE_IP"}),
    ("localhost", None, {"HELO_NOT_FQDN"}),
    ("nodot", None, {"HELO_NOT_FQDN"}),
    ("ghost.helo-checks.test", None, {"HELO_NO_DNS"}),
    ("elsewhere.helo-checks.test", None, {"HELO_NOT_CLIENT"}),
    ("v6only.helo-checks.test", None, {"HELO_NOT_CLIENT"}),
    ("host.unserved.example", None, {"HELO_TEMPERROR"}),
    ("bad_name.partner.example", None, {"HELO_INVALID"}),
    ("mail.example.com", OURS, set()),  # relay_networks may use our names
]


def test_helo_findings_reach_x_spam_symbols(proxy_factory, recorded, zones):
    proxy = proxy_factory(settings(zones.nameserver, helo={
        "check_dns": True, "check_dns_matches_client": True,
    }))
    for index, (helo, source, expected) in enumerate(HELO_CASES):
        arrived = deliver(proxy, recorded, f"helo-{index}", helo=helo, source=source)
        symbols = symbols_of(arrived)
        assert with_prefix(symbols, "HELO_") == expected, (helo, source, symbols)
        assert f"from {helo} ([{source or '127.0.0.1'}])".encode() in arrived.content
    forged = symbols_of(recorded.find(header="Subject", value="helo-3")[0])
    assert forged["HELO_FORGED"] == 4.0
    # Both findings of a forged literal are shown; their sum is capped at the group's 5.
    both = recorded.find(header="Subject", value="helo-7")[0]
    assert symbols_of(both) == {"HELO_FORGED": 4.0, "HELO_LITERAL_MISMATCH": 2.0}
    assert both.header("X-Spam-Score") == "5"


def test_helo_block_mode_and_a_new_ehlo(proxy_factory, recorded, zones):
    proxy = proxy_factory(settings(zones.nameserver, helo={
        "mode": "block", "reject": ["HELO_FORGED", "HELO_INVALID"],
    }))
    with SMTPClient(*proxy.inbound) as smtp:
        forged = smtp.ehlo("postwall.test")
        assert (forged.code, forged.enhanced) == (550, "5.7.1"), forged
        assert smtp.mail("alice@partner.example").code == 503  # no HELO accepted yet
        invalid = smtp.helo("bad_name.partner.example")
        assert (invalid.code, invalid.enhanced) == (501, "5.5.2"), invalid
        # A true name is welcome on the same connection; only its findings count.
        assert smtp.ehlo("localhost").code == 250
        assert smtp.mail("alice@partner.example").code == 250
        assert smtp.rcpt("bob@example.com").code == 250
        assert smtp.data(message("after-refusal")).code == 250
    arrived = recorded.wait_for_match(header="Subject", value="after-refusal")[0]
    assert symbols_of(arrived) == {"HELO_NOT_FQDN": 2.0}
    # A second EHLO is judged afresh: the first one's findings do not count twice.
    with SMTPClient(*proxy.inbound) as smtp:
        assert smtp.ehlo("localhost").code == 250
        assert smtp.ehlo("nodot").code == 250
        assert smtp.mail("alice@partner.example").code == 250
        assert smtp.rcpt("bob@example.com").code == 250
        assert smtp.data(message("twice")).code == 250
        assert smtp.ehlo("exists.helo-checks.test").code == 250
        assert smtp.mail("alice@partner.example").code == 250
        assert smtp.rcpt("bob@example.com").code == 250
        assert smtp.data(message("fixed")).code == 250
    twice = recorded.wait_for_match(header="Subject", value="twice")[0]
    assert symbols_of(twice) == {"HELO_NOT_FQDN": 2.0}
    fixed = recorded.wait_for_match(header="Subject", value="fixed")[0]
    assert symbols_of(fixed) == {}


# --------------------------------------------------------------------------------------
# FCrDNS
# --------------------------------------------------------------------------------------

RDNS_CASES = [
    # (client address, RDNS symbols expected, name in our Received line)
    ("127.0.0.5", set(), "mail.fcrdns.test"),
    ("127.0.0.6", {"RDNS_NOT_CONFIRMED"}, None),
    ("127.0.0.7", {"RDNS_DYNAMIC"}, "127-0-0-7.dyn.isp.fcrdns.test"),
    ("127.0.0.8", {"RDNS_NONE"}, None),
    ("127.0.0.9", {"RDNS_TEMPERROR"}, None),
    ("127.0.0.10", set(), "second.fcrdns.test"),  # the second PTR name confirms
    ("127.0.0.11", {"RDNS_DYNAMIC"}, "dhcp-pool.fcrdns.test"),
]


def test_fcrdns_findings_and_received_line(proxy_factory, recorded, zones):
    proxy = proxy_factory(settings(zones.nameserver, fcrdns={"mode": "score"}))
    for source, expected, name in RDNS_CASES:
        arrived = deliver(proxy, recorded, f"rdns-{source}", source=source,
                          helo=f"[{source}]")
        symbols = symbols_of(arrived)
        assert with_prefix(symbols, "RDNS_") == expected, (source, symbols)
        client = f"{name} [{source}]" if name else f"[{source}]"
        assert f"from [{source}] ({client})".encode() in arrived.content, source
    weights = symbols_of(recorded.find(header="Subject", value="rdns-127.0.0.8")[0])
    assert weights["RDNS_NONE"] == 1.5


def test_fcrdns_dns_failures_never_hold_the_greeting(proxy_factory, recorded, zones):
    with BrokenDNS("silent") as broken:
        proxy = proxy_factory({
            **settings(broken.nameserver, fcrdns={"mode": "score"}),
            "dns": {"nameservers": [broken.nameserver], "timeout": 0.3, "lifetime": 0.6},
        })
        started = time.monotonic()
        arrived = deliver(proxy, recorded, "rdns-timeout", sender="alice@partner.example",
                          helo="mail.partner.example")
        assert time.monotonic() - started < 3.0
        assert symbols_of(arrived) == {"RDNS_TEMPERROR": 0.0}
        # A resolver that would wait 10 s: the greeting still goes out at once, and MAIL
        # FROM waits for the lookup no longer than the filter's timeout.
        slow = proxy_factory({
            **settings(broken.nameserver, fcrdns={"mode": "score", "timeout": 1.0}),
            "dns": {"nameservers": [broken.nameserver], "timeout": 5, "lifetime": 10},
        })
        with SMTPClient(*slow.inbound) as smtp:
            started = time.monotonic()
            assert smtp.ehlo("mail.partner.example").code == 250
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            assert smtp.mail("alice@partner.example").code == 250
            assert 0.8 < time.monotonic() - started < 2.5
            assert smtp.rcpt("bob@example.com").code == 250
            assert smtp.data(message("rdns-filter-timeout")).code == 250
        arrived = recorded.wait_for_match(header="Subject", value="rdns-filter-timeout")[0]
        assert symbols_of(arrived) == {"FCRDNS_ERROR": 0.0}


# --------------------------------------------------------------------------------------
# Sender validation
# --------------------------------------------------------------------------------------

def mail_reply(proxy: Any, sender: str, source: str | None = None) -> Any:
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        assert smtp.ehlo("exists.helo-checks.test").code == 250
        return smtp.mail(sender)


def test_sender_domains_in_block_mode(proxy_factory, recorded, zones):
    proxy = proxy_factory(settings(
        zones.nameserver, sender={"mode": "block"}, ip_lists={"allow": ["127.0.0.6/32"]},
    ))
    refused = {
        "alice@ghost.sender-checks.test": (550, "5.1.8", "Domain not found"),
        "alice@nullmx.sender-checks.test": (550, "5.7.27", "null MX"),
        "alice@localhost": (553, "5.1.7", "Invalid domain"),
        "ceo@example.com": (550, "5.7.1", "Local domain used from outside"),
    }
    for sender, (code, enhanced, text) in refused.items():
        reply = mail_reply(proxy, sender, source="127.0.0.5")
        assert (reply.code, reply.enhanced) == (code, enhanced), (sender, reply)
        assert text in reply.text
    accepted = {
        "alice@mx.sender-checks.test": {},
        "alice@aonly.sender-checks.test": {},  # the A record is the implicit MX
        "alice@v6only.sender-checks.test": {},
        "alice@nothing.sender-checks.test": {"SENDER_NO_MX": 2.5},
        "alice@host.unserved.example": {"SENDER_TEMPERROR": 0.0},  # fail_open
        "": {},  # the null sender (bounces) is never judged
    }
    for index, (sender, expected) in enumerate(accepted.items()):
        arrived = deliver(proxy, recorded, f"sender-{index}", sender=sender)
        assert {k: v for k, v in symbols_of(arrived).items() if k.startswith("SENDER_")} \
            == expected, sender
    # Our own domain from our own network is fine; the proxy kept serving throughout.
    arrived = deliver(proxy, recorded, "sender-ours", sender="ceo@example.com", source=OURS)
    assert "SENDER_LOCAL_FORGED" not in symbols_of(arrived)
    # A client in ip_allow is accepted at connect: no check judges it afterwards.
    arrived = deliver(proxy, recorded, "sender-allowed", sender="ceo@example.com",
                      source="127.0.0.6")
    assert arrived.header("X-Spam-Status") == "No, accepted by ip_lists"


def test_sender_findings_only_score_in_score_mode(proxy_factory, recorded, zones):
    proxy = proxy_factory(settings(zones.nameserver, sender={"mode": "score"}))
    arrived = deliver(proxy, recorded, "scored-nx", sender="alice@ghost.sender-checks.test")
    assert symbols_of(arrived)["SENDER_DOMAIN_NXDOMAIN"] == 4.0
    arrived = deliver(proxy, recorded, "scored-local", sender="ceo@example.com",
                      source="127.0.0.5")
    assert symbols_of(arrived)["SENDER_LOCAL_FORGED"] == 5.0
    assert arrived.header("X-Spam-Status").startswith("Yes")  # 5 reaches the tag threshold


@pytest.mark.parametrize("on_error", ["tempfail", "fail_open"])
def test_sender_dns_timeout_follows_on_error(proxy_factory, recorded, on_error):
    with BrokenDNS("silent") as broken:
        proxy = proxy_factory({
            **settings(broken.nameserver, sender={"mode": "block", "on_error": on_error}),
            "dns": {"nameservers": [broken.nameserver], "timeout": 0.3, "lifetime": 0.6},
        })
        started = time.monotonic()
        reply = mail_reply(proxy, "alice@partner.example")
        assert time.monotonic() - started < 3.0
        if on_error == "tempfail":
            assert (reply.code, reply.enhanced) == (451, "4.1.8"), reply
        else:
            assert reply.code == 250, reply
            arrived = deliver(proxy, recorded, "dns-down", sender="alice@partner.example")
            assert symbols_of(arrived) == {"SENDER_TEMPERROR": 0.0}
        # Mail that needs no lookup still flows while DNS is down.
        bounce = deliver(proxy, recorded, f"bounce-{on_error}", sender="")
        assert bounce.mail_from == "<>"  # aiosmtpd's spelling of the null sender


# --------------------------------------------------------------------------------------
# postwall analyze
# --------------------------------------------------------------------------------------

def test_analyze_runs_the_dns_checks(zones, tmp_path: Path):
    config = {
        "local_domains": ["example.com"],
        "data_dir": str(tmp_path / "data"),
        "smtp": {"hostname": "postwall.test"},
        "listen": {"inbound": "127.0.0.1:2525", "relay": None},
        **settings(zones.nameserver, sender={"mode": "block"}, fcrdns={"mode": "score"}),
    }
    config_path = tmp_path / "postwall.yml"
    config_path.write_text(yaml.safe_dump(config))
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("analyzed", "alice@ghost.sender-checks.test"))
    argv = [sys.executable, "-m", "appliance", "analyze", "--config", str(config_path),
            str(eml), "--ip", "127.0.0.6", "--helo", "[127.0.0.9]"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mail     RDNS_NOT_CONFIRMED" in out
    assert "helo     HELO_LITERAL_MISMATCH" in out
    assert "mail     SENDER_DOMAIN_NXDOMAIN" in out
    assert "reply: 550 5.1.8 Sender address rejected: Domain not found" in out
    without_helo = subprocess.run(argv[:-2], capture_output=True, text=True, timeout=60,
                                  check=False)
    assert without_helo.returncode == 0, without_helo.stderr
    assert "HELO_" not in without_helo.stdout
    assert "helo=(not given" in without_helo.stdout
