"""SRS (Shevek's guarded scheme): SRS0/SRS1 forms, hash, timestamp, case, skew, secrets."""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest

from appliance import srs
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, RecipientContext, TransactionContext
from appliance.filters.srs import SRSForwardFilter, SRSReverseFilter
from appliance.services import Services
from appliance.srs import SRS, SRSError
from appliance.verdict import Decision

NOW = 1_700_000_000.0
DAY = 86400
OURS = SRS([b"s" * 40], "srs.example.com")


def test_srs0_format_and_reverse():
    rewritten = OURS.forward("alice@orig.example", now=NOW)
    match = re.fullmatch(r"SRS0=([A-Za-z0-9+/]{4})=([A-Z2-7]{2})=orig\.example=alice"
                         r"@srs\.example\.com", rewritten)
    assert match is not None
    assert srs.decode_timestamp(match.group(2)) == int(NOW // DAY) % 1024
    reversal = OURS.reverse(rewritten, now=NOW)
    assert reversal.address == "alice@orig.example" and reversal.kind == "SRS0"


def test_case_folded_by_a_relay_still_reverses():
    rewritten = OURS.forward("Alice@Orig.example", now=NOW)
    local, _, domain = rewritten.rpartition("@")
    assert OURS.reverse(f"{local.lower()}@{domain.upper()}", now=NOW).address.lower() \
        == "alice@orig.example"
    assert OURS.reverse(rewritten.upper(), now=NOW)


def test_srs1_for_an_address_another_forwarder_rewrote():
    first = SRS([b"f" * 40], "fwd1.example")
    srs0 = first.forward("alice@orig.example", now=NOW)
    srs1 = OURS.forward(srs0, now=NOW)
    assert srs1.startswith("SRS1=") and "=fwd1.example==" in srs1
    assert srs1.endswith("@srs.example.com")
    # a bounce to our SRS1 goes back to the first forwarder's SRS0 address...
    back = OURS.reverse(srs1, now=NOW)
    assert back.kind == "SRS1" and back.address == srs0
    # ...which the first forwarder reverses to the original sender
    assert first.reverse(back.address, now=NOW).address == "alice@orig.example"
    # and a third hop rewriting our SRS1 still points at the first forwarder
    third = SRS([b"t" * 40], "fwd3.example")
    srs1_again = third.forward(srs1, now=NOW)
    assert "=fwd1.example==" in srs1_again and third.reverse(srs1_again).address == srs0


def test_our_own_srs_domain_and_null_sender_are_not_rewritten():
    rewritten = OURS.forward("alice@orig.example", now=NOW)
    assert OURS.forward(rewritten, now=NOW) == rewritten
    assert OURS.forward("") == ""


@pytest.mark.parametrize("mangle, reason", [
    (lambda a: a.replace("SRS0=", "SRS0=x", 1), "hash has 5 characters"),
    (lambda a: "SRS0=AAAA" + a[9:], "hash does not match"),
    (lambda a: a.replace("=alice@", "=bob@"), "hash does not match"),
    (lambda a: "SRS0=" + a[5:9][:1] + "=" + a[10:], "hash has 1 characters"),
    (lambda a: "SRS0=garbage@srs.example.com", "malformed SRS address"),
    (lambda a: "SRS1=abcd=nohost@srs.example.com", "malformed SRS address"),
    (lambda a: a.replace("@srs.example.com", "@other.example"), "not an address of the SRS"),
])
def test_malformed_and_forged_addresses_are_refused_with_a_reason(mangle, reason):
    rewritten = OURS.forward("alice@orig.example", now=NOW)
    with pytest.raises(SRSError, match=reason):
        OURS.reverse(mangle(rewritten), now=NOW)


def test_timestamp_age_skew_and_wrap():
    rewritten = OURS.forward("alice@orig.example", now=NOW)
    assert OURS.reverse(rewritten, now=NOW + 21 * DAY)
    with pytest.raises(SRSError, match="expired"):
        OURS.reverse(rewritten, now=NOW + 22 * DAY)
    with pytest.raises(SRSError, match="expired"):
        OURS.reverse(rewritten, now=NOW + 500 * DAY)
    # made by a forwarder whose clock is a day ahead
    assert OURS.reverse(OURS.forward("a@orig.example", now=NOW + DAY), now=NOW)
    with pytest.raises(SRSError, match="expired"):
        OURS.reverse(OURS.forward("a@orig.example", now=NOW + 3 * DAY), now=NOW)
    # across the 1024-day wrap of the two-character timestamp
    wrap = (int(NOW // DAY) // 1024 + 1) * 1024 * DAY - DAY
    assert OURS.reverse(OURS.forward("a@orig.example", now=wrap), now=wrap + 5 * DAY)


def test_bad_timestamp_characters():
    digest = OURS._hash(OURS.secrets[0], "A1", "orig.example", "alice")
    with pytest.raises(SRSError, match="not base32"):
        OURS.reverse(f"SRS0={digest}=A1=orig.example=alice@srs.example.com", now=NOW)


def test_rotated_secret_still_reverses():
    old = SRS([b"old" * 12], "srs.example.com")
    rewritten = old.forward("alice@orig.example", now=NOW)
    rotated = SRS([b"new" * 12, b"old" * 12], "srs.example.com")
    assert rotated.reverse(rewritten, now=NOW).address == "alice@orig.example"
    assert rotated.forward("alice@orig.example", now=NOW) != rewritten


def test_secret_file_created_owner_only(tmp_path):
    path = tmp_path / "srs.keys"
    secrets = srs.load_secrets(path)
    assert len(secrets) == 1 and len(secrets[0]) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert srs.load_secrets(path) == secrets


# -- filters ------------------------------------------------------------------------------


def make(cls, tmp_path, **settings):
    config = Config(local_domains=["example.com", "srs.example.com"], data_dir=tmp_path,
                    filters={"srs": {"mode": "block", "domain": "srs.example.com", **settings}})
    return cls(config.filters.srs, {}, config, Services())


def tx_for(listener: Listener, sender: str) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.1"), 1, listener)
    return TransactionContext(connection=conn, mail_from=sender)


def test_srs_domain_must_be_local(tmp_path):
    config = Config(local_domains=["example.com"], data_dir=tmp_path,
                    filters={"srs": {"mode": "block", "domain": "srs.example.net"}})
    with pytest.raises(ValueError, match="must be one of local_domains"):
        SRSForwardFilter(config.filters.srs, {}, config, Services())


def test_schema_requires_the_domain():
    with pytest.raises(ValueError, match="domain is required"):
        Config(filters={"srs": {"mode": "block"}})


def test_forward_filter_rewrites_foreign_senders_on_the_relay(tmp_path):
    forward = make(SRSForwardFilter, tmp_path)
    tx = tx_for(Listener.RELAY, "alice@orig.example")
    assert asyncio.run(forward.check(tx)).symbols[0].name == "SRS_REWRITTEN"
    assert tx.relay_sender.startswith("SRS0=") and tx.relay_sender.endswith("@srs.example.com")
    for listener, sender in [(Listener.RELAY, "me@example.com"), (Listener.RELAY, ""),
                             (Listener.INBOUND, "alice@orig.example")]:
        tx = tx_for(listener, sender)
        asyncio.run(forward.check(tx))
        assert tx.relay_sender == sender


def test_reverse_filter(tmp_path, caplog):
    reverse = make(SRSReverseFilter, tmp_path)
    rewriter = SRS(srs.load_secrets(tmp_path / "srs.keys"), "srs.example.com")
    tx = tx_for(Listener.INBOUND, "")
    tx.current_rcpt = RecipientContext(rewriter.forward("alice@orig.example"))
    assert asyncio.run(reverse.check(tx)).symbols[0].name == "SRS_REVERSED"
    assert tx.current_rcpt.relay_address == "alice@orig.example"

    tx = tx_for(Listener.INBOUND, "")
    tx.current_rcpt = RecipientContext("SRS0=zzzz=AA=orig.example=alice@srs.example.com")
    verdict = asyncio.run(reverse.check(tx))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert str(verdict.final.reply).startswith("550 5.1.1 Invalid SRS address: hash")
    assert "SRS: refused <SRS0=zzzz=AA=orig.example=alice@srs.example.com>" in caplog.text
    assert tx.current_rcpt.relay_address is None

    tx = tx_for(Listener.INBOUND, "")
    tx.current_rcpt = RecipientContext("alice@srs.example.com")  # a plain mailbox there
    assert asyncio.run(reverse.check(tx)).final is None
