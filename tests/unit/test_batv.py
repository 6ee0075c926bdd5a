"""BATV/PRVS tags: format, hash, expiry, case, clock skew, key file and the filters."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import stat

import pytest

from appliance import batv, keyfile
from appliance.batv import BATVKey, TagStatus
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, RecipientContext, TransactionContext
from appliance.filters.backscatter import BATVBounceFilter, BATVRecipientFilter, BATVSignFilter
from appliance.services import Services
from appliance.verdict import Decision

KEY = BATVKey(1, b"k" * 40)
OTHER = BATVKey(2, b"o" * 40)
NOW = 1_700_000_000.0  # day 19675
DAY = 86400


def test_format_is_prvs_kdddssssss():
    tagged = batv.sign("alice@example.com", KEY, valid_days=7, now=NOW)
    match = re.fullmatch(r"prvs=(\d)(\d{3})([0-9a-f]{6})=alice@example.com", tagged)
    assert match is not None
    assert match.group(1) == "1"
    assert int(match.group(2)) == (int(NOW // DAY) + 7) % 1000


def test_valid_tag_round_trip_and_stripped_address():
    tagged = batv.sign("alice@example.com", KEY, now=NOW)
    result = batv.check(tagged, [KEY], now=NOW)
    assert result.status is TagStatus.VALID and result.address == "alice@example.com"


def test_case_changes_by_other_mtas_do_not_break_the_tag():
    tagged = batv.sign("Alice@Example.com", KEY, now=NOW)
    assert batv.check(tagged.upper(), [KEY], now=NOW).valid
    assert batv.check(tagged.lower(), [KEY], now=NOW).valid


def test_forged_hash_unknown_key_and_malformed():
    tagged = batv.sign("alice@example.com", KEY, now=NOW)
    forged = tagged[:9] + ("0" if tagged[9] != "0" else "1") + tagged[10:]
    assert batv.check(forged, [KEY], now=NOW).status is TagStatus.BAD_HASH
    # the same tag moved to another user does not validate
    moved = tagged.replace("alice@", "bob@")
    assert batv.check(moved, [KEY], now=NOW).status is TagStatus.BAD_HASH
    assert batv.check(tagged, [OTHER], now=NOW).status is TagStatus.UNKNOWN_KEY
    bad = batv.check("prvs=xyz=alice@example.com", [KEY], now=NOW)
    assert bad.status is TagStatus.MALFORMED and bad.address == "prvs=xyz=alice@example.com"
    assert batv.check("alice@example.com", [KEY], now=NOW).status is TagStatus.UNTAGGED


def test_expiry_and_clock_skew():
    tagged = batv.sign("alice@example.com", KEY, valid_days=7, now=NOW)
    assert batv.check(tagged, [KEY], now=NOW + 7 * DAY).valid  # the expiry day itself
    assert batv.check(tagged, [KEY], now=NOW + 8 * DAY).status is TagStatus.EXPIRED
    assert batv.check(tagged, [KEY], now=NOW + 300 * DAY).status is TagStatus.EXPIRED
    # signed by an appliance whose clock runs a day ahead of ours
    ahead = batv.sign("alice@example.com", KEY, valid_days=60, now=NOW + DAY)
    assert batv.check(ahead, [KEY], now=NOW).valid
    far_ahead = batv.sign("alice@example.com", KEY, valid_days=60, now=NOW + 3 * DAY)
    assert batv.check(far_ahead, [KEY], now=NOW).status is TagStatus.EXPIRED


def test_day_wraps_at_1000():
    before_wrap = (int(NOW // DAY) // 1000 + 1) * 1000 * DAY - 2 * DAY  # two days before
    tagged = batv.sign("a@example.com", KEY, valid_days=7, now=before_wrap)
    assert batv.check(tagged, [KEY], now=before_wrap + 5 * DAY).valid
    assert batv.check(tagged, [KEY], now=before_wrap + 9 * DAY).status is TagStatus.EXPIRED


def test_rotation_old_key_still_verifies():
    tagged = batv.sign("a@example.com", KEY, now=NOW)
    assert batv.check(tagged, [OTHER, KEY], now=NOW).valid


def test_old_reversed_form_is_understood():
    tagged = batv.sign("alice@example.com", KEY, now=NOW)
    tag = tagged.split("=")[1]
    assert batv.check(f"alice=prvs={tag}@example.com", [KEY], now=NOW).valid


def test_sha256_digest():
    tagged = batv.sign("a@example.com", KEY, now=NOW, digest="sha256")
    assert batv.check(tagged, [KEY], now=NOW, digest="sha256").valid
    assert not batv.check(tagged, [KEY], now=NOW, digest="sha1").valid


def test_sign_refuses_non_addresses():
    with pytest.raises(ValueError):
        batv.sign("no-at-sign", KEY)


# -- key file ---------------------------------------------------------------------------


def test_key_file_generated_owner_only_and_stable(tmp_path):
    path = tmp_path / "state" / "batv.keys"
    keys = batv.load_keys(path)
    assert len(keys) == 1 and keys[0].number == 1 and len(keys[0].secret) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert batv.load_keys(path) == keys  # second use reads, never regenerates


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "batv.keys"
    batv.load_keys(path)
    os.chmod(path, 0o644)
    with pytest.raises(keyfile.KeyFileError, match="chmod 600"):
        batv.load_keys(path)


@pytest.mark.parametrize("text, message", [
    ("", "holds no key"),
    ("x " + "s" * 40, "expected 'K SECRET'"),
    ("1 short", "expected 'K SECRET'"),
    ("1 " + "a" * 40 + "\n1 " + "b" * 40, "appears twice"),
])
def test_bad_key_files(tmp_path, text, message):
    path = tmp_path / "batv.keys"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(keyfile.KeyFileError, match=message):
        batv.load_keys(path)


def test_key_rotation_file_first_line_signs(tmp_path):
    path = tmp_path / "batv.keys"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"# new key on top\n2 {'n' * 40}\n1 {'o' * 40}\n".encode())
    os.close(fd)
    keys = batv.load_keys(path)
    assert [k.number for k in keys] == [2, 1]


# -- the filters (no network: pure pipeline objects) ------------------------------------


def make(cls, tmp_path, **settings):
    config = Config(local_domains=["example.com"], data_dir=tmp_path,
                    filters={"batv": {"mode": "block", **settings}})
    return cls(config.filters.batv, {}, config, Services())


def tx_for(listener: Listener, sender: str, content: bytes | None = None) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.1"), 1, listener)
    tx = TransactionContext(connection=conn, mail_from=sender)
    tx.content = content
    return tx


def run(coro):
    return asyncio.run(coro)


def test_sign_filter_tags_local_senders_on_the_relay_only(tmp_path):
    signer = make(BATVSignFilter, tmp_path)
    tx = tx_for(Listener.RELAY, "alice@example.com")
    verdict = run(signer.check(tx))
    assert verdict.symbols[0].name == "BATV_SIGNED"
    assert tx.relay_sender.startswith("prvs=1") and tx.relay_sender.endswith("=alice@example.com")
    for listener, sender in [(Listener.INBOUND, "alice@example.com"),
                             (Listener.RELAY, "someone@elsewhere.example"),
                             (Listener.RELAY, ""), (Listener.RELAY, "postmaster@example.com")]:
        tx = tx_for(listener, sender)
        run(signer.check(tx))
        assert tx.relay_sender == sender


def test_recipient_filter_strips_valid_tags_and_refuses_forged_bounces(tmp_path):
    checker = make(BATVRecipientFilter, tmp_path)
    tagged = batv.sign("alice@example.com", batv.load_keys(tmp_path / "batv.keys")[0])
    tx = tx_for(Listener.INBOUND, "")
    tx.current_rcpt = RecipientContext(tagged)
    verdict = run(checker.check(tx))
    assert verdict.symbols[0].name == "BATV_VALID"
    assert tx.current_rcpt.relay_address == "alice@example.com"
    assert "alice@example.com" in tx.validated_bounce_rcpts

    forged = tagged[:-len("=alice@example.com") - 1] + "0=alice@example.com"
    if forged == tagged:
        forged = tagged[:-len("=alice@example.com") - 1] + "1=alice@example.com"
    tx = tx_for(Listener.INBOUND, "")
    tx.current_rcpt = RecipientContext(forged)
    verdict = run(checker.check(tx))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.symbol.name == "BATV_INVALID"
    assert str(verdict.final.reply).startswith("550 5.7.1")
    assert tx.current_rcpt.relay_address == "alice@example.com"  # stripped all the same

    # not a bounce: the tag is only stripped
    tx = tx_for(Listener.INBOUND, "friend@elsewhere.example")
    tx.current_rcpt = RecipientContext(forged)
    assert run(checker.check(tx)).final is None
    assert tx.current_rcpt.relay_address == "alice@example.com"


DSN = (b"From: MAILER-DAEMON@elsewhere.example\r\nTo: alice@example.com\r\nSubject: failure\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
       b" boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b1--\r\n")
MDN = DSN.replace(b"delivery-status", b"disposition-notification")
PLAIN = b"From: x@elsewhere.example\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.mark.parametrize("sender, content, refused", [
    ("", PLAIN, True),  # null sender to an untagged address
    ("mailer@elsewhere.example", DSN, True),  # a DSN from a non-null sender
    ("", MDN, False),  # a read receipt goes to the From address
    ("friend@elsewhere.example", PLAIN, False),  # ordinary mail
])
def test_bounce_filter(tmp_path, sender, content, refused):
    judge = make(BATVBounceFilter, tmp_path)
    tx = tx_for(Listener.INBOUND, sender, content)
    tx.rcpt_tos = ["alice@example.com"]
    verdict = run(judge.check(tx))
    assert (verdict.final is not None) is refused
    if refused:
        assert verdict.final.symbol.name == "BATV_MISSING"


def test_bounce_filter_accepts_validated_and_exempt_recipients(tmp_path):
    judge = make(BATVBounceFilter, tmp_path)
    tx = tx_for(Listener.INBOUND, "", PLAIN)
    tx.rcpt_tos = ["alice@example.com", "postmaster@example.com"]
    tx.validated_bounce_rcpts.add("alice@example.com")
    assert run(judge.check(tx)).final is None


def test_unusable_key_file_fails_each_check_and_is_logged(tmp_path, caplog):
    path = tmp_path / "batv.keys"
    batv.load_keys(path)
    os.chmod(path, 0o640)
    signer = make(BATVSignFilter, tmp_path)
    assert "readable by others" in caplog.text
    with pytest.raises(keyfile.KeyFileError):
        run(signer.check(tx_for(Listener.RELAY, "alice@example.com")))
