"""DNSBL and DNSWL through the real proxy, Postfix and an authoritative DNS server (NSD).

Clients other than 127.0.0.1 connect from 127.0.0.N (all of 127/8 is local), so the zones
list `N.0.0.127`. RFC 5782's test entries hold in the usable zones: 127.0.0.2 is listed
(client .2 is the "listed" client), 127.0.0.1 is not; client .3 is nowhere listed.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dns_server import AuthoritativeDNS, BrokenDNS
from tests.support.smtpclient import SMTPClient, send_message

ZEN = "zen.dnsbl.test"
SECOND = "second.dnsbl.test"
ALLOW = "wl.dnswl.test"
REFUSING = "refused.dnsbl.test"
REFUSING_PROBED = "refused-probed.dnsbl.test"
EVERYTHING = "everything.dnsbl.test"

ZONES = {
    ZEN: [
        "2.0.0.127 IN A 127.0.0.2",
        "4.0.0.127 IN A 127.0.0.10",
        "5.0.0.127 IN A 127.0.0.2",
        "5.0.0.127 IN A 127.0.0.10",
        "6.0.0.127 IN A 127.0.0.99",
        "7.0.0.127 IN A 192.0.2.7",  # outside 127/8: bogus
        "8.0.0.127 IN A 127.0.0.2",
        "spam.example IN A 127.0.0.2",  # the same zone as a URI list, for `analyze`
    ],
    SECOND: ["2.0.0.127 IN A 127.0.0.2", "5.0.0.127 IN A 127.0.0.2"],
    ALLOW: ["2.0.0.127 IN A 127.0.10.2", "8.0.0.127 IN A 127.0.10.3"],
    REFUSING: ["* IN A 127.255.255.254"],  # "your resolver is refused", for every name
    REFUSING_PROBED: ["* IN A 127.255.255.255"],
    EVERYTHING: ["* IN A 127.0.0.2"],  # lists 127.0.0.1 too: lists everything
}

ZEN_ZONE = {
    "zone": ZEN,
    "label": "ZEN",
    "weight": 2.5,
    "codes": {
        "127.0.0.2": {"label": "SBL", "weight": 6},
        "127.0.0.10": {"label": "PBL", "weight": 1.5},
    },
}


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zones(ZONES)
    return dns_server


def dnsbl_config(dns: AuthoritativeDNS | BrokenDNS, **dnsbl: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"mode": "score", "check_private": True, "zones": [ZEN_ZONE]}
    settings.update(dnsbl)
    return {"dns": {"nameservers": [dns.nameserver]}, "filters": {"dnsbl": settings}}


def message(subject: str) -> bytes:
    return (
        f"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@partner.example>\r\n\r\nHello.\r\n"
    ).encode()


def send_from(proxy, client: str, subject: str, sender: str = "alice@partner.example"):
    host, port = proxy.inbound
    return send_message(host, port, message(subject), mail_from=sender,
                        rcpt_tos=["bob@example.com"], source=client)


def delivered(recorded, subject: str):
    [found] = recorded.wait_for_match(header="Subject", value=subject)
    return found


def symbols_of(found) -> dict[str, float]:
    header = (found.header("X-Spam-Symbols") or "").replace("\r\n", "").replace("\t", " ")
    pairs = (item.strip().partition("=") for item in header.split(",") if item.strip())
    return {name: float(score) for name, _, score in pairs}


def metrics_text(proxy) -> str:
    host, port = proxy.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def suspended_gauge(proxy, zone: str) -> float | None:
    prefix = f'postwall_dnsbl_zone_suspended{{zone="{zone}"}} '
    for line in metrics_text(proxy).splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def test_listed_client_scores_by_return_code_and_unlisted_does_not(
    zones, proxy_factory, recorded
):
    proxy = proxy_factory(dnsbl_config(zones))
    cases = {
        "127.0.0.2": {"DNSBL_ZEN_SBL": 6.0},
        "127.0.0.4": {"DNSBL_ZEN_PBL": 1.5},
        "127.0.0.5": {"DNSBL_ZEN_SBL": 6.0, "DNSBL_ZEN_PBL": 1.5},
        "127.0.0.6": {"DNSBL_ZEN": 2.5},  # a code the config does not name: the zone weight
        "127.0.0.7": {},  # answered outside 127/8: ignored as bogus
        "127.0.0.3": {},  # not listed
    }
    for client in cases:
        assert send_from(proxy, client, f"from {client}").accepted
    for client, expected in cases.items():
        found = delivered(recorded, f"from {client}")
        got = {k: v for k, v in symbols_of(found).items() if k.startswith("DNSBL")}
        assert got == expected, (client, found.header("X-Spam-Symbols"))
    # 6 >= the tag threshold 5: score mode tags, it never refuses.
    assert delivered(recorded, "from 127.0.0.2").header("X-Spam-Status").startswith("Yes")
    assert delivered(recorded, "from 127.0.0.3").header("X-Spam-Status").startswith("No")
    assert "answered outside 127.0.0.0/8 (192.0.2.7)" in proxy.stderr_text()


def test_block_mode_refuses_a_listed_client_at_mail_from(zones, proxy_factory, recorded):
    proxy = proxy_factory(dnsbl_config(zones, mode="block", reject_score=5))
    host, port = proxy.inbound
    with SMTPClient(host, port, source="127.0.0.2") as smtp:
        smtp.ehlo()
        reply = smtp.mail("alice@partner.example")
        assert (reply.code, reply.enhanced) == (554, "5.7.1"), reply
        assert f"[127.0.0.2] blocked using {ZEN}" in reply.text
    # A PBL listing alone (1.5) stays below reject_score: the mail is delivered.
    assert send_from(proxy, "127.0.0.4", "pbl only").accepted
    assert symbols_of(delivered(recorded, "pbl only"))["DNSBL_ZEN_PBL"] == 1.5
    assert send_from(proxy, "127.0.0.3", "clean client").accepted
    delivered(recorded, "clean client")


def test_whitelisted_sender_is_not_refused_by_a_blocklist(zones, proxy_factory, recorded):
    config = dnsbl_config(zones, mode="block", reject_score=5)
    config["filters"]["address_lists"] = {"whitelist": ["friend@partner.example"]}
    proxy = proxy_factory(config)
    assert send_from(proxy, "127.0.0.2", "friend", sender="friend@partner.example").accepted
    found = delivered(recorded, "friend")
    assert not any(name.startswith("DNSBL") for name in symbols_of(found))


def test_group_cap_limits_what_all_blocklists_add_together(zones, proxy_factory, recorded):
    second = {"zone": SECOND, "label": "SECOND", "weight": 3}
    config = dnsbl_config(zones, zones=[ZEN_ZONE, second])
    config["scoring"] = {"group_caps": {"dnsbl": 7}, "thresholds": {"reject": 50}}
    proxy = proxy_factory(config)
    assert send_from(proxy, "127.0.0.5", "capped").accepted
    found = delivered(recorded, "capped")
    symbols = symbols_of(found)
    assert symbols["DNSBL_ZEN_SBL"] == 6 and symbols["DNSBL_ZEN_PBL"] == 1.5
    assert symbols["DNSBL_SECOND"] == 3
    assert float(found.header("X-Spam-Score")) == 7  # 10.5 capped at 7


def test_dnswl_lowers_the_score(zones, proxy_factory, recorded):
    allow = {"zone": ALLOW, "label": "WL", "weight": -4}
    proxy = proxy_factory(dnsbl_config(zones, dnswl_zones=[allow]))
    assert send_from(proxy, "127.0.0.8", "allow listed").accepted
    found = delivered(recorded, "allow listed")
    symbols = symbols_of(found)
    assert symbols["DNSBL_ZEN_SBL"] == 6 and symbols["DNSWL_WL"] == -4
    assert float(found.header("X-Spam-Score")) == 2
    assert found.header("X-Spam-Status").startswith("No")


def test_refusal_code_suspends_the_zone_instead_of_scoring(zones, proxy_factory, recorded):
    # One zone is caught by a client's lookup, the other already by its probe.
    refusing = {"zone": REFUSING, "label": "REFUSING", "weight": 9, "probe": False}
    probed = {"zone": REFUSING_PROBED, "label": "PROBED", "weight": 9}
    proxy = proxy_factory(dnsbl_config(zones, zones=[ZEN_ZONE, refusing, probed]))
    for n in range(2):
        assert send_from(proxy, "127.0.0.3", f"refused {n}").accepted
        symbols = symbols_of(delivered(recorded, f"refused {n}"))
        assert not any(name.startswith("DNSBL") for name in symbols), symbols
    # The other zone goes on scoring.
    assert send_from(proxy, "127.0.0.2", "zen still works").accepted
    symbols = symbols_of(delivered(recorded, "zen still works"))
    assert "DNSBL_ZEN_SBL" in symbols and "DNSBL_REFUSING" not in symbols
    assert suspended_gauge(proxy, REFUSING) == 1
    assert suspended_gauge(proxy, REFUSING_PROBED) == 1
    assert suspended_gauge(proxy, ZEN) in (None, 0)
    stderr = proxy.stderr_text()
    assert f"DNS list zone {REFUSING} (dnsbl) suspended" in stderr
    assert "answered 127.255.255.254 for 127.0.0.3" in stderr
    assert "answered 127.255.255.255 for its test entry" in stderr
    assert stderr.count(f"zone {REFUSING} (dnsbl) suspended") == 1  # one alert, not one a mail


def test_zone_listing_everything_is_suspended_by_its_probe(zones, proxy_factory, recorded):
    everything = {"zone": EVERYTHING, "label": "ALL", "weight": 9}
    proxy = proxy_factory(dnsbl_config(zones, zones=[ZEN_ZONE, everything]))
    assert send_from(proxy, "127.0.0.3", "wildcard zone").accepted
    symbols = symbols_of(delivered(recorded, "wildcard zone"))
    assert "DNSBL_ALL" not in symbols, symbols
    assert suspended_gauge(proxy, EVERYTHING) == 1
    assert "lists 127.0.0.1, which must never be listed" in proxy.stderr_text()
    # Without the probe the same zone would have scored every client.
    unprobed = dict(everything, probe=False)
    second = proxy_factory(dnsbl_config(zones, zones=[unprobed]))
    assert send_from(second, "127.0.0.3", "unprobed wildcard").accepted
    assert symbols_of(delivered(recorded, "unprobed wildcard"))["DNSBL_ALL"] == 9


@pytest.mark.parametrize(("on_error", "expected"), [("fail_open", 250), ("tempfail", 451)])
def test_silent_dns_server_gets_on_error_within_the_timeout(
    proxy_factory, recorded, on_error, expected
):
    with BrokenDNS("silent") as silent:
        config = dnsbl_config(silent, timeout=1.0, on_error=on_error)
        proxy = proxy_factory(config)
        host, port = proxy.inbound
        for n in range(2):  # and the proxy keeps serving
            with SMTPClient(host, port, source="127.0.0.2") as smtp:
                smtp.ehlo()
                started = time.monotonic()
                reply = smtp.mail("alice@partner.example")
                waited = time.monotonic() - started
                assert reply.code == expected, reply
                assert waited < 2.0, waited
                if expected == 250:
                    assert smtp.rcpt("bob@example.com").code == 250
                    assert smtp.data(message(f"silent dns {n}")).code == 250
        assert silent.queries > 0
    if expected == 250:
        symbols = symbols_of(delivered(recorded, "silent dns 1"))
        assert symbols.get("DNSBL_ERROR") == 0, symbols
        assert not any(k.startswith("DNSBL_ZEN") for k in symbols)


# --------------------------------------------------------------------------------------
# postwall analyze
# --------------------------------------------------------------------------------------

def test_analyze_shows_the_dns_list_symbols(zones, tmp_path: Path):
    uribl_zone = {"zone": ZEN, "label": "URLS", "weight": 2, "probe_listed": "",
                  "probe_unlisted": ""}
    config = {
        "local_domains": ["example.com"],
        "data_dir": str(tmp_path / "data"),
        "smtp": {"hostname": "postwall.test"},
        "listen": {"inbound": "127.0.0.1:2525", "relay": None},
        **dnsbl_config(zones, mode="block", reject_score=5),
    }
    config["filters"]["uribl"] = {"mode": "score", "zones": [uribl_zone]}
    config_path = tmp_path / "postwall.yml"
    config_path.write_text(yaml.safe_dump(config))
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("analyzed").replace(b"Hello.", b"See http://www.spam.example/"))
    argv = [sys.executable, "-m", "appliance", "analyze", "--config", str(config_path),
            str(eml), "--ip"]
    listed = subprocess.run([*argv, "127.0.0.2"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "mail     DNSBL_ZEN_SBL" in listed.stdout
    assert f"127.0.0.2 in {ZEN} (127.0.0.2)" in listed.stdout
    assert f"reply: 554 5.7.1 Service unavailable; client host [127.0.0.2] blocked using " \
           f"{ZEN}" in listed.stdout
    pbl = subprocess.run([*argv, "127.0.0.4"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert pbl.returncode == 0, pbl.stderr
    assert "mail     DNSBL_ZEN_PBL" in pbl.stdout
    assert "data     URIBL_URLS" in pbl.stdout and f"spam.example in {ZEN}" in pbl.stdout


def test_broken_dns_answers_fail_open_and_the_proxy_keeps_serving(proxy_factory, recorded):
    """Garbage, truncated, SERVFAIL, REFUSED, wrong-id and short answers: each gives the
    zero-score DNSBL_ERROR naming the zone, and the mail is delivered."""
    behaviours = ("garbage", "truncated", "servfail", "refused", "wrong_id", "short")
    with BrokenDNS(behaviours[0]) as broken:
        config = dnsbl_config(broken, timeout=3.0)
        config["dns"].update({"error_ttl": 0, "timeout": 0.5, "lifetime": 1.0})
        proxy = proxy_factory(config)
        for behaviour in behaviours:
            broken.behaviour = behaviour
            started = time.monotonic()
            assert send_from(proxy, "127.0.0.2", f"broken {behaviour}").accepted, behaviour
            assert time.monotonic() - started < 5
        for behaviour in behaviours:
            found = delivered(recorded, f"broken {behaviour}")
            symbols = symbols_of(found)
            assert symbols.get("DNSBL_ERROR") == 0, (behaviour, symbols)
            assert not any(k.startswith("DNSBL_ZEN") for k in symbols), (behaviour, symbols)
