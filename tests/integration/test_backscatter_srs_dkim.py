"""BATV, SRS and DKIM signing end to end: client -> postwall -> real Postfix -> recorder,
with the DKIM keys made by the appliance published in the real NSD and verified with
dkimpy, and the BATV/SRS secrets read from the proxy's own key files."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import dkim
import dns.nameserver
import dns.resolver
import pytest

from appliance import batv, dkim_keys, srs
from tests.support.dns_server import AuthoritativeDNS, txt_record
from tests.support.services import RecordedMessage
from tests.support.smtpclient import SMTPClient, send_message

ZONE = "signing.test"  # our domain: DKIM keys published here
SRS_DOMAIN = "srs.signing.test"
DAY = 86400


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zones({ZONE: ["@ IN A 127.0.0.1"]})
    return dns_server


def message(sender: str, subject: str, to: str = "bob@remote.example") -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 01 Jul 2025 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@{ZONE}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hello,\r\n\r\nthe figures are attached.\r\n.leading dot survives\r\n"
    ).encode()


def dsn(to: str, subject: str) -> bytes:
    return (
        f"From: MAILER-DAEMON@remote.example\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        " boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; "
        "remote.example\r\n\r\nFinal-Recipient: rfc822; bob@remote.example\r\nAction: failed"
        "\r\nStatus: 5.1.1\r\n--b1--\r\n"
    ).encode()


def config(nameserver: str, *, batv_mode: str = "block", srs_mode: str = "block",
           **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "local_domains": ["example.com", ZONE, SRS_DOMAIN],
        "dns": {"nameservers": [nameserver]},
        "filters": {"batv": {"mode": batv_mode},
                    "srs": {"mode": srs_mode, "domain": SRS_DOMAIN}},
        "dkim_signing": {"enabled": True},
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def start_with_key(proxy_factory, zones: AuthoritativeDNS, cfg: dict[str, Any],
                   algorithm: str = "rsa"):
    """A proxy whose data directory holds a fresh DKIM key of ZONE, published in NSD."""
    proxy = proxy_factory(cfg, start=False)
    record = dkim_keys.generate(proxy.data_dir, ZONE, "s1", algorithm=algorithm)
    zones.set_zone(ZONE, ["@ IN A 127.0.0.1",
                          f"s1._domainkey IN TXT {txt_record(record.value)}"])
    proxy.start()
    return proxy


def dnsfunc_for(zones: AuthoritativeDNS):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(zones.host, zones.port)]
    resolver.lifetime = 3

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", search=False)
        return b"".join(b"".join(r.strings) for r in answer)

    return dnsfunc


def relay_send(proxy, sender: str, rcpt: str, content: bytes):
    return send_message(*proxy.relay, content, mail_from=sender, rcpt_tos=[rcpt])


def inbound_send(proxy, sender: str, rcpt: str, content: bytes):
    return send_message(*proxy.inbound, content, mail_from=sender, rcpt_tos=[rcpt],
                        helo="mx.remote.example")


def only(recorded, subject: str) -> RecordedMessage:
    [found] = recorded.wait_for_match(header="Subject", value=subject)
    return found


def batv_keys(proxy) -> list[batv.BATVKey]:
    return batv.load_keys(proxy.data_dir / "batv.keys")


# -- outgoing -----------------------------------------------------------------------------


def test_outgoing_mail_gets_a_batv_sender_and_a_dkim_signature_that_verifies(
        proxy_factory, recorded, zones):
    proxy = start_with_key(proxy_factory, zones, config(zones.nameserver))
    result = relay_send(proxy, f"alice@{ZONE}", "bob@remote.example",
                        message(f"alice@{ZONE}", "signed outgoing"))
    assert result.accepted, result
    found = only(recorded, "signed outgoing")
    assert re.fullmatch(rf"prvs=1\d{{3}}[0-9a-f]{{6}}=alice@{re.escape(ZONE)}", found.mail_from)
    assert batv.check(found.mail_from, batv_keys(proxy)).valid
    key_file = proxy.data_dir / "batv.keys"
    assert key_file.stat().st_mode & 0o777 == 0o600
    signature = found.header("DKIM-Signature")
    assert signature is not None and f"d={ZONE}" in signature and "s=s1" in signature
    # dkimpy verifies the octets the recorder got (Postfix added its Received on top)
    # against the key published in the real DNS server.
    assert dkim.verify(found.content, dnsfunc=dnsfunc_for(zones))
    # the message log names the rewriting and the signature
    assert wait_for_log(proxy, "BATV_SIGNED(0)") and "DKIM_SIGNED(0)" in proxy.stderr_text()


def test_ed25519_signature_verifies(proxy_factory, recorded, zones):
    proxy = start_with_key(proxy_factory, zones, config(zones.nameserver, batv_mode="off"),
                           algorithm="ed25519")
    assert relay_send(proxy, f"carol@{ZONE}", "bob@remote.example",
                      message(f"carol@{ZONE}", "ed25519 outgoing")).accepted
    found = only(recorded, "ed25519 outgoing")
    assert found.mail_from == f"carol@{ZONE}"  # BATV off: sender as given
    assert "a=ed25519-sha256" in (found.header("DKIM-Signature") or "")
    assert dkim.verify(found.content, dnsfunc=dnsfunc_for(zones))


def test_rotation_signs_with_the_new_selector_without_a_reload(proxy_factory, recorded, zones):
    proxy = start_with_key(proxy_factory, zones, config(zones.nameserver, batv_mode="off"))
    new = dkim_keys.rotate(proxy.data_dir, ZONE, "s2")
    old = dkim_keys.record_for(proxy.data_dir, ZONE, "s1")
    zones.set_zone(ZONE, ["@ IN A 127.0.0.1", f"s1._domainkey IN TXT {txt_record(old.value)}",
                          f"s2._domainkey IN TXT {txt_record(new.value)}"])
    assert relay_send(proxy, f"alice@{ZONE}", "bob@remote.example",
                      message(f"alice@{ZONE}", "after rotation")).accepted
    found = only(recorded, "after rotation")
    assert "s=s2" in found.header("DKIM-Signature")
    assert dkim.verify(found.content, dnsfunc=dnsfunc_for(zones))
    assert [r.selector for r in dkim_keys.dns_records(proxy.data_dir, ZONE)] == ["s2", "s1"]


def test_missing_dkim_key_file_is_logged_and_the_mail_goes_out_unsigned(
        proxy_factory, recorded, zones):
    proxy = start_with_key(proxy_factory, zones, config(zones.nameserver, batv_mode="off"))
    key_file = proxy.data_dir / "dkim" / ZONE / "s1.key"
    key_file.unlink()
    result = relay_send(proxy, f"alice@{ZONE}", "bob@remote.example",
                        message(f"alice@{ZONE}", "key gone"))
    assert result.accepted
    found = only(recorded, "key gone")
    assert found.header("DKIM-Signature") is None
    assert wait_for_log(proxy, f"DKIM signing for {ZONE} impossible: key file {key_file} "
                               "is missing; sent unsigned")


def test_unreadable_dkim_key_with_tempfail_setting_answers_451(proxy_factory, recorded, zones):
    cfg = config(zones.nameserver, batv_mode="off",
                 dkim_signing={"enabled": True, "on_key_error": "tempfail"})
    proxy = start_with_key(proxy_factory, zones, cfg)
    key_file = proxy.data_dir / "dkim" / ZONE / "s1.key"
    os.chmod(key_file, 0o644)  # readable by others: refused like a missing key
    result = relay_send(proxy, f"alice@{ZONE}", "bob@remote.example",
                        message(f"alice@{ZONE}", "tempfailed"))
    assert result.data is not None and result.data.code == 451, result
    recorded.assert_no_messages(within=1.0)
    assert wait_for_log(proxy, "readable by others")
    os.chmod(key_file, 0o600)  # fixed: the retry goes out signed
    assert relay_send(proxy, f"alice@{ZONE}", "bob@remote.example",
                      message(f"alice@{ZONE}", "tempfailed")).accepted
    assert only(recorded, "tempfailed").header("DKIM-Signature") is not None


def test_listed_domain_without_any_key(proxy_factory, recorded, zones):
    cfg = config(zones.nameserver, batv_mode="off",
                 dkim_signing={"enabled": True, "domains": ["example.com"]})
    proxy = proxy_factory(cfg)
    assert relay_send(proxy, "dave@example.com", "bob@remote.example",
                      message("dave@example.com", "no key at all")).accepted
    assert only(recorded, "no key at all").header("DKIM-Signature") is None
    assert wait_for_log(proxy, "DKIM signing for example.com impossible: example.com has no "
                               "active DKIM key")


# -- BATV inbound ---------------------------------------------------------------------------


def test_bounce_with_a_valid_tag_is_accepted_and_delivered_untagged(
        proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    tagged = batv.sign(f"alice@{ZONE}", batv_keys(proxy)[0])
    result = inbound_send(proxy, "", tagged, dsn(tagged, "genuine bounce"))
    assert result.accepted, result
    found = only(recorded, "genuine bounce")
    assert found.rcpt_tos == (f"alice@{ZONE}",)
    assert found.mail_from in ("", "<>")  # the recorder spells <> as given
    assert "BATV_VALID=0" in " ".join((found.header("X-Spam-Symbols") or "").split())


def test_forged_and_expired_tags_are_refused_at_rcpt(proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    key = batv_keys(proxy)[0]
    forged = batv.sign(f"alice@{ZONE}", batv.BATVKey(key.number, b"x" * 64))
    expired = batv.sign(f"alice@{ZONE}", key, valid_days=7, now=time.time() - 70 * DAY)
    for address, status in [(forged, "bad hash"), (expired, "expired")]:
        result = inbound_send(proxy, "", address, dsn(address, "backscatter"))
        reply = result.rcpts[address]
        assert (reply.code, reply.text[:5]) == (550, "5.7.1"), reply
        assert wait_for_log(proxy, f"BATV: bounce to {address} refused: {status}")
    recorded.assert_no_messages(within=1.0)


def test_untagged_bounce_is_refused_at_data_and_scored_in_score_mode(
        proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    result = inbound_send(proxy, "", f"alice@{ZONE}", dsn(f"alice@{ZONE}", "untagged"))
    assert result.rcpts[f"alice@{ZONE}"].code == 250
    assert result.data is not None and result.data.code == 550
    assert "without a BATV tag" in result.data.text
    recorded.assert_no_messages(within=1.0)

    scoring = proxy_factory(config(zones.nameserver, batv_mode="score"))
    assert inbound_send(scoring, "", f"alice@{ZONE}",
                        dsn(f"alice@{ZONE}", "untagged scored")).accepted
    found = only(recorded, "untagged scored")
    assert "BATV_MISSING=5" in " ".join((found.header("X-Spam-Symbols") or "").split())


def test_ordinary_mail_to_a_tagged_address_is_delivered_plain(proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    tagged = batv.sign(f"alice@{ZONE}", batv.BATVKey(1, b"y" * 64))  # not our key
    assert inbound_send(proxy, "friend@remote.example", tagged,
                        message("friend@remote.example", "reply to return path",
                                to=tagged)).accepted
    assert only(recorded, "reply to return path").rcpt_tos == (f"alice@{ZONE}",)


# -- SRS ------------------------------------------------------------------------------------


def test_forwarded_mail_gets_srs_and_its_bounce_is_reversed(proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    assert relay_send(proxy, "someone@orig.example", "bob@remote.example",
                      message("someone@orig.example", "forwarded")).accepted
    found = only(recorded, "forwarded")
    rewritten = found.mail_from
    assert re.fullmatch(rf"SRS0=[A-Za-z0-9+/]{{4}}=[A-Z2-7]{{2}}=orig\.example=someone@"
                        rf"{re.escape(SRS_DOMAIN)}", rewritten), rewritten
    assert wait_for_log(proxy, "SRS_REWRITTEN(0)")

    recorded.clear()
    result = inbound_send(proxy, "", rewritten, dsn(rewritten, "bounce of forwarded"))
    assert result.accepted, result
    bounce = only(recorded, "bounce of forwarded")
    assert bounce.rcpt_tos == ("someone@orig.example",) and bounce.mail_from in ("", "<>")
    assert "SRS_REVERSED=0" in " ".join((bounce.header("X-Spam-Symbols") or "").split())


def test_srs1_for_an_already_rewritten_sender(proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    first_hop = srs.SRS([b"f" * 40], "fwd1.example").forward("someone@orig.example")
    assert relay_send(proxy, first_hop, "bob@remote.example",
                      message("someone@orig.example", "second hop")).accepted
    rewritten = only(recorded, "second hop").mail_from
    assert rewritten.startswith("SRS1=") and "=fwd1.example==" in rewritten
    recorded.clear()
    assert inbound_send(proxy, "", rewritten, dsn(rewritten, "to first hop")).accepted
    assert only(recorded, "to first hop").rcpt_tos == (first_hop,)


def test_malformed_and_forged_srs_addresses_are_refused_with_550(proxy_factory, recorded, zones):
    proxy = proxy_factory(config(zones.nameserver))
    secrets = srs.load_secrets(proxy.data_dir / "srs.keys")
    old = srs.SRS(secrets, SRS_DOMAIN).forward("someone@orig.example",
                                                now=time.time() - 40 * DAY)
    cases = {
        f"SRS0=garbage@{SRS_DOMAIN}": "malformed SRS address",
        f"SRS0=AAAA=AA=orig.example=someone@{SRS_DOMAIN}": "hash does not match",
        old: "timestamp expired",
    }
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo("mx.remote.example")
        assert smtp.mail("").code == 250
        for address, reason in cases.items():
            reply = smtp.rcpt(address)
            assert (reply.code, reply.text[:5]) == (550, "5.1.1"), reply
            assert reason in reply.text
            assert wait_for_log(proxy, f"SRS: refused <{address}>")
        # the session goes on: a valid recipient in the same transaction is accepted
        assert smtp.rcpt(f"alice@{ZONE}").code == 250
        smtp.rset()
    recorded.assert_no_messages(within=0.5)


def wait_for_log(proxy, text: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proxy.stderr_text():
            return True
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the proxy log:\n{proxy.stderr_text()[-3000:]}")




# -- with recipient verification -------------------------------------------------------------


def test_recipient_verification_judges_the_address_behind_the_tag_and_the_srs_address(
        proxy_factory, recorded, zones):
    # Only alice is a user of ZONE: verification must look through the BATV tag (alice is
    # known, carol is not) and leave an SRS bounce alone (it goes back to an outside
    # sender, whom the internal server cannot know).
    proxy = proxy_factory(config(zones.nameserver, filters={"recipient_verify": {
        "mode": "block", "default": {"method": "static"},
        "valid_recipients": [f"alice@{ZONE}", f"@{SRS_DOMAIN}", "@example.com"]}}))
    key = batv_keys(proxy)[0]
    tagged = batv.sign(f"alice@{ZONE}", key)
    assert inbound_send(proxy, "", tagged, dsn(tagged, "bounce to a user")).accepted
    assert only(recorded, "bounce to a user").rcpt_tos == (f"alice@{ZONE}",)

    stranger = batv.sign(f"carol@{ZONE}", key)
    result = inbound_send(proxy, "", stranger, dsn(stranger, "bounce to nobody"))
    reply = result.rcpts[stranger]
    assert (reply.code, reply.text[:5]) == (550, "5.1.1"), reply

    assert relay_send(proxy, "someone@orig.example", "bob@remote.example",
                      message("someone@orig.example", "forwarded again")).accepted
    rewritten = only(recorded, "forwarded again").mail_from
    recorded.clear()
    assert inbound_send(proxy, "", rewritten, dsn(rewritten, "srs bounce")).accepted
    assert only(recorded, "srs bounce").rcpt_tos == ("someone@orig.example",)
