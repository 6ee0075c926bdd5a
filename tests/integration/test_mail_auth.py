"""SPF, DKIM and DMARC end to end: client -> postwall (resolver -> real NSD) -> real
Postfix -> recorder, with the results in X-Spam-Symbols and Authentication-Results."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import mailauth
from tests.support.dns_server import AuthoritativeDNS, BrokenDNS
from tests.support.mailauth import (
    ESP_ZONE,
    QUARANTINE_ZONE,
    REJECT_ZONE,
    SIGNER_ZONE,
    SPF_ZONE,
    message,
    sign,
)
from tests.support.services import RecordedMessage
from tests.support.smtpclient import SMTPClient, send_message

REPO = Path(__file__).resolve().parents[2]
AUTHSERV_ID = "postwall.test"  # smtp.hostname of the test proxy


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> Iterator[AuthoritativeDNS]:
    dns_server.set_zones(mailauth.auth_zones())
    yield dns_server


def auth_config(nameserver: str, mode: str = "score", **filters: dict[str, Any]
                ) -> dict[str, Any]:
    sections = {name: {"mode": mode} for name in ("spf", "dkim", "dmarc")}
    for name, settings in filters.items():
        sections[name].update(settings)
    return {"dns": {"nameservers": [nameserver]}, "filters": sections}


def send(proxy, content: bytes, sender: str, *, helo: str = "client.example.net",
         relay: bool = False):
    host, port = proxy.relay if relay else proxy.inbound
    return send_message(host, port, content, mail_from=sender, rcpt_tos=["bob@example.com"],
                        helo=helo)


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def our_results(message: RecordedMessage) -> str:
    ours = [one_line(v) for v in message.headers("Authentication-Results")
            if one_line(v).lower().startswith(AUTHSERV_ID + ";")]
    assert len(ours) == 1, message.headers("Authentication-Results")
    return ours[0]


def delivered(recorded, subject: str) -> RecordedMessage:
    [found] = recorded.wait_for_match(header="Subject", value=subject)
    return found


def test_results_in_symbols_and_authentication_results(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver))
    keys = mailauth.keys()

    content = sign(message(f"news@{SIGNER_ZONE}", "signed and passing"), keys["signer"],
                   SIGNER_ZONE)
    assert send(proxy, content, f"bounce@pass.{SPF_ZONE}").accepted
    found = delivered(recorded, "signed and passing")
    symbols = one_line(found.header("X-Spam-Symbols"))
    assert "SPF_PASS=-0.5" in symbols and "DKIM_VALID=-0.5" in symbols
    assert "DMARC_NONE=0" in symbols
    results = our_results(found)
    assert f"spf=pass reason=\"sender SPF authorized\" smtp.mailfrom=bounce@pass.{SPF_ZONE};" \
        in results
    assert f"dkim=pass header.d={SIGNER_ZONE} header.s=s1 header.a=rsa-sha256" in results
    assert f"dmarc=none reason=\"{SIGNER_ZONE}: no DMARC record\" header.from={SIGNER_ZONE}" \
        in results

    content = message(f"x@{QUARANTINE_ZONE}", "spf fails, dmarc quarantines")
    assert send(proxy, content, f"bounce@fail.{SPF_ZONE}").accepted
    found = delivered(recorded, "[SPAM] spf fails, dmarc quarantines")
    symbols = one_line(found.header("X-Spam-Symbols"))
    assert "SPF_FAIL=3" in symbols and "DKIM_NONE=0" in symbols
    assert "DMARC_FAIL_QUARANTINE=5" in symbols
    assert found.header("X-Spam-Status").startswith("Yes, score=8")
    results = our_results(found)
    assert "spf=fail" in results and "dkim=none" in results
    assert "dmarc=fail (p=quarantine dis=quarantine)" in results

    # The null sender (a bounce): SPF checks the HELO name.
    content = message(f"mailer-daemon@{SIGNER_ZONE}", "a bounce")
    assert send(proxy, content, "", helo=f"helo.{SPF_ZONE}").accepted
    found = delivered(recorded, "a bounce")
    assert f"spf=pass reason=\"sender SPF authorized\" smtp.helo=helo.{SPF_ZONE}" \
        in our_results(found)

    # Outgoing mail (relay listener) is not checked and gets no header.
    content = message("me@example.com", "outgoing")
    assert send(proxy, content, f"me@fail.{SPF_ZONE}", relay=True).accepted
    found = delivered(recorded, "outgoing")
    assert found.header("Authentication-Results") is None
    assert found.header("X-Spam-Symbols") is None


def test_tampered_body_fails_dkim(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver))
    content = sign(message(f"news@{SIGNER_ZONE}", "tampered"), mailauth.keys()["signer"],
                   SIGNER_ZONE).replace(b"regards.", b"regards, and send money.")
    assert send(proxy, content, f"bounce@pass.{SPF_ZONE}").accepted
    found = delivered(recorded, "tampered")
    assert "DKIM_INVALID=1" in one_line(found.header("X-Spam-Symbols"))
    assert f'dkim=fail reason="body hash mismatch" header.d={SIGNER_ZONE}' \
        in our_results(found)


def test_forged_authentication_results_are_replaced(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver))
    forged = [
        f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=ceo@bank.test; "
        "dkim=pass header.d=bank.test; dmarc=pass header.from=bank.test",
        f"Authentication-Results: (looks harmless)\r\n\t{AUTHSERV_ID.upper()}; dmarc=pass",
        "Authentication-Results: upstream.example.net; spf=neutral",
    ]
    content = message(f"x@{SIGNER_ZONE}", "forged results", extra_headers=forged)
    assert send(proxy, content, f"bounce@fail.{SPF_ZONE}").accepted
    found = delivered(recorded, "forged results")
    values = [one_line(v) for v in found.headers("Authentication-Results")]
    assert len(values) == 2, values
    assert "spf=fail" in our_results(found)
    assert "bank.test" not in " ".join(values)
    assert any(v.startswith("upstream.example.net;") for v in values)


def test_dmarc_reject_in_block_mode(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver, "block"))
    keys = mailauth.keys()
    # Sent through a third party: SPF and DKIM pass for esp-auth.test, not for the From
    # domain, which publishes p=reject.
    spoofed = sign(message(f"ceo@{REJECT_ZONE}", "wire the money"), keys["esp"], ESP_ZONE)
    result = send(proxy, spoofed, f"bounce@{ESP_ZONE}")
    reply = result.final
    assert (reply.code, reply.enhanced) == (550, "5.7.1"), reply
    assert f"DMARC policy of {REJECT_ZONE}" in reply.text
    # The same message signed by the domain itself passes.
    genuine = sign(message(f"ceo@{REJECT_ZONE}", "genuine"), keys["own"], REJECT_ZONE)
    assert send(proxy, genuine, f"bounce@{ESP_ZONE}").accepted
    found = delivered(recorded, "genuine")
    assert "DMARC_PASS=-0.5" in one_line(found.header("X-Spam-Symbols"))
    assert f"dmarc=pass (p=reject dis=none) reason=\"DKIM aligned (d={REJECT_ZONE})\"" \
        in our_results(found)
    assert not recorded.find(header="Subject", value="wire the money")


def test_dmarc_reject_in_score_mode_is_only_scored(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver, "score"))
    spoofed = message(f"ceo@{REJECT_ZONE}", "scored only")
    assert send(proxy, spoofed, f"bounce@{ESP_ZONE}").accepted
    found = delivered(recorded, "[SPAM] scored only")
    assert "DMARC_FAIL_REJECT=8" in one_line(found.header("X-Spam-Symbols"))


def test_spf_fail_refused_at_mail_from_when_asked(proxy_factory, recorded, zones):
    proxy = proxy_factory(auth_config(zones.nameserver, "block",
                                      spf={"reject_fail": True}))
    result = send(proxy, message(f"x@{SIGNER_ZONE}", "refused"), f"x@failexp.{SPF_ZONE}")
    assert result.data is None
    assert str(result.mail) == (f"550 5.7.23 SPF fail for failexp.{SPF_ZONE}: Host 127.0.0.1 "
                                f"may not send mail for failexp.{SPF_ZONE}")
    assert send(proxy, message(f"x@{SIGNER_ZONE}", "softfail passes"),
                f"x@softfail.{SPF_ZONE}").accepted
    found = delivered(recorded, "softfail passes")
    assert "SPF_SOFTFAIL=1" in one_line(found.header("X-Spam-Symbols"))
    assert not recorded.find(header="Subject", value="refused")


def test_dead_dns_gives_temperror_and_the_proxy_keeps_serving(proxy_factory, recorded):
    with BrokenDNS("silent") as broken:
        config = auth_config(broken.nameserver, "block", spf={"timeout": 4},
                             dkim={"timeout": 4}, dmarc={"timeout": 4})
        config["dns"].update({"timeout": 0.5, "lifetime": 1.0})
        proxy = proxy_factory(config)
        content = sign(message(f"ceo@{REJECT_ZONE}", "dns is down"), mailauth.keys()["own"],
                       REJECT_ZONE)
        outcome: dict[str, Any] = {}

        def slow_send() -> None:
            started = time.monotonic()
            outcome["result"] = send(proxy, content, f"bounce@pass.{SPF_ZONE}")
            outcome["seconds"] = time.monotonic() - started

        sender = threading.Thread(target=slow_send)
        sender.start()
        # While that session waits on DNS, another one is served at once.
        time.sleep(0.3)
        with SMTPClient(*proxy.inbound, timeout=5) as other:
            started = time.monotonic()
            assert other.ehlo("other.example.net").code == 250
            assert other.noop().code == 250
            assert time.monotonic() - started < 0.5
            other.quit()
        sender.join(timeout=30)
        assert broken.queries > 0
    result = outcome["result"]
    assert result.accepted, result.final
    # One timed-out lookup per check (1 s lifetime each; measured 3.8 s in all), far
    # below the 3 x 4 s of the filters' own timeouts.
    assert outcome["seconds"] < 8
    found = delivered(recorded, "dns is down")
    symbols = one_line(found.header("X-Spam-Symbols"))
    for name in ("SPF_TEMPERROR=0", "DKIM_TEMPERROR=0", "DMARC_TEMPERROR=0"):
        assert name in symbols, symbols
    results = our_results(found)
    assert "spf=temperror" in results and "dkim=temperror" in results
    assert "dmarc=temperror" in results


def test_analyze_shows_the_auth_symbols(tmp_path: Path, zones):
    config = {
        "smtp": {"hostname": AUTHSERV_ID}, "local_domains": ["example.com"],
        "data_dir": str(tmp_path / "data"),
        **auth_config(zones.nameserver),
    }
    config_path = tmp_path / "postwall.yml"
    config_path.write_text(yaml.safe_dump(config))
    eml = tmp_path / "message.eml"
    eml.write_bytes(sign(message(f"news@{SIGNER_ZONE}", "analyzed"), mailauth.keys()["signer"],
                         SIGNER_ZONE))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "analyze", "--config", str(config_path), str(eml),
         "--from", f"bounce@pass.{SPF_ZONE}", "--ip", "127.0.0.1", "--helo",
         "client.example.net"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SPF_PASS" in out and "DKIM_VALID" in out and "DMARC_NONE" in out
    assert f"auth: spf=pass reason=\"sender SPF authorized\" smtp.mailfrom=bounce@pass." \
        f"{SPF_ZONE}" in out
    assert f"auth: dkim=pass header.d={SIGNER_ZONE}" in out
    # Another client address: the same sender now fails SPF.
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "analyze", "--config", str(config_path), str(eml),
         "--from", f"bounce@pass.{SPF_ZONE}", "--ip", "192.0.2.50"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SPF_FAIL" in result.stdout
