"""The proxy end to end: client -> postwall -> real Postfix on 127.0.0.1:125 -> recorder."""

from __future__ import annotations

import io
import sqlite3
import time
import urllib.request
import zipfile
from email.message import EmailMessage

import pytest

from tests.support.smtpclient import SMTPClient, send_message


def make_message(subject: str = "quarterly report", body: str = "Hello,\r\nsee you.\r\n",
                 sender: str = "alice@partner.example", to: str = "bob@example.com") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}"
        f"@partner.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}"
    ).encode()


def with_attachment(filename: str, payload: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@partner.example"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "files"
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<files@partner.example>"
    msg.set_content("see attached")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream",
                       filename=filename)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def send(proxy, content: bytes, *, sender="alice@partner.example", rcpts=("bob@example.com",),
         relay=False, **kwargs):
    host, port = proxy.relay if relay else proxy.inbound
    return send_message(host, port, content, mail_from=sender, rcpt_tos=list(rcpts), **kwargs)


def test_clean_mail_arrives_byte_identical_below_added_headers(proxy, recorded):
    content = make_message()
    result = send(proxy, content)
    assert result.accepted, result.final
    [message] = recorded.wait_for(1)
    assert message.content.endswith(content)
    added = message.content[: -len(content)]
    # Only headers were added on top: Postfix's Received, then ours.
    assert b"\r\n\r\n" not in added
    assert message.header("X-Postwall-Id")
    assert message.header("X-Spam-Status").startswith("No, score=0")
    assert message.mail_from == "alice@partner.example"
    assert list(message.rcpt_tos) == ["bob@example.com"]
    assert b"by postwall.test (Postwall) with ESMTP" in added


def test_forged_verdict_headers_from_outside_are_removed(proxy, recorded):
    content = make_message().replace(b"Subject:", b"X-Spam-Status: No, trust me\r\nSubject:")
    assert send(proxy, content).accepted
    [message] = recorded.wait_for(1)
    assert message.headers("X-Spam-Status") == ["No, score=0 required=5"]


@pytest.mark.parametrize("recipient", [
    "someone@elsewhere.example",
    "user%elsewhere.example@example.com",
    "elsewhere.example!user@example.com",
    '"user@elsewhere.example"@example.com',
    "user@[127.0.0.1]",
    "user@example.com.elsewhere.example",
])
def test_inbound_listener_is_no_open_relay(proxy, recorded, recipient):
    result = send(proxy, make_message(), rcpts=[recipient])
    reply = result.rcpts[recipient]
    assert reply.code == 550 and reply.enhanced == "5.7.1", reply
    recorded.assert_no_messages(within=0.5)


def test_source_routed_recipient_is_refused(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@partner.example").code == 250
        reply = smtp.rcpt("@relay.elsewhere.example:bob@example.com")
        assert reply.code == 550 and reply.enhanced == "5.7.1"


def test_postfix_replies_pass_through_per_recipient(proxy, recorded):
    rcpts = ["bob@example.com", "postfix-rejects@example.com", "postfix-defers@example.com"]
    result = send(proxy, make_message(), rcpts=rcpts)
    assert result.rcpts["bob@example.com"].code == 250
    assert result.rcpts["postfix-rejects@example.com"].code == 550
    assert result.rcpts["postfix-rejects@example.com"].enhanced == "5.1.1"
    assert result.rcpts["postfix-defers@example.com"].code == 450
    assert result.accepted
    [message] = recorded.wait_for(1)
    assert list(message.rcpt_tos) == ["bob@example.com"]


def test_postfix_down_means_451_and_nothing_acknowledged(proxy, recorded, postfix):
    with postfix.stopped():
        result = send(proxy, make_message())
        reply = result.rcpts["bob@example.com"]
        assert reply.code == 451 and reply.enhanced == "4.4.1"
        assert result.data is None
    assert send(proxy, make_message("after restart")).accepted
    [message] = recorded.wait_for(1)
    assert message.header("Subject") == "after restart"


@pytest.mark.proxy_config({"filters": {"address_lists": {"blacklist": ["@spam.example"]}}})
def test_blacklisted_sender_gets_550_at_mail(proxy, recorded):
    result = send(proxy, make_message(), sender="x@spam.example")
    assert result.mail.code == 550 and result.mail.enhanced == "5.7.1"
    recorded.assert_no_messages(within=0.5)


@pytest.mark.proxy_config({"filters": {"ip_lists": {"deny": ["127.0.0.0/8"]}}})
def test_denied_client_ip_is_refused_at_greeting(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        assert smtp.greeting.code == 554
        assert smtp.greeting.enhanced == "5.7.1"


def test_blocked_attachment_gets_554_even_inside_zip(proxy, recorded):
    result = send(proxy, with_attachment("invoice.pdf.exe", b"MZ\x90\x00"))
    assert result.data.code == 554 and "invoice.pdf.exe" in result.data.text
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("docs/readme.txt", "hi")
        archive.writestr("docs/setup.scr", "MZ")
    result = send(proxy, with_attachment("docs.zip", buffer.getvalue()))
    assert result.data.code == 554 and "setup.scr" in result.data.text
    recorded.assert_no_messages(within=0.5)


SPAM_RULES = {
    "filters": {"regex": {
        "bomb_re": [{"pattern": r"cheap\s+pills", "weight": 2}],
        "bomb_subject_re": [{"pattern": "winner", "weight": 3}],
    }},
    "scoring": {"thresholds": {"tag": 5, "quarantine": 8, "reject": 12}},
}


@pytest.mark.proxy_config(SPAM_RULES)
def test_scores_map_to_tag_quarantine_and_reject(proxy, recorded):
    tagged = send(proxy, make_message("offer", "cheap pills here\r\n"))
    assert tagged.accepted
    [message] = recorded.wait_for(1)
    assert message.header("Subject") == "[SPAM] offer"
    assert message.header("X-Spam-Flag") == "YES"
    assert "BOMB_RE=6" in message.header("X-Spam-Symbols")

    quarantined = send(proxy, make_message("you are a winner", "hello\r\n"))
    assert quarantined.accepted
    recorded.wait_for(2)
    quarantine_id = None
    for item in recorded.messages():
        if "winner" in item.header("Subject"):
            quarantine_id = item.header("X-Postwall-Id")
    assert quarantine_id and (proxy.data_dir / "mail" / "spam" / f"{quarantine_id}.eml").exists()

    rejected = send(proxy, make_message("winner", "cheap pills\r\n"))
    assert rejected.data.code == 550 and rejected.data.enhanced == "5.7.1"
    time.sleep(0.5)
    assert len(recorded.messages()) == 2


@pytest.mark.proxy_config({**SPAM_RULES, "test_mode": True})
def test_test_mode_turns_blocks_into_tags(proxy, recorded):
    result = send(proxy, make_message("winner", "cheap pills\r\n"))
    assert result.accepted
    [message] = recorded.wait_for(1)
    assert message.header("Subject") == "[SPAM] winner"


@pytest.mark.proxy_config({**SPAM_RULES, "filters": {
    **SPAM_RULES["filters"], "address_lists": {"whitelist": ["*@partner.example"]}}})
def test_whitelisted_sender_is_not_scored(proxy, recorded):
    assert send(proxy, make_message("winner", "cheap pills\r\n")).accepted
    [message] = recorded.wait_for(1)
    assert message.header("X-Spam-Status") == "No, accepted by address_lists"
    assert message.header("Subject") == "winner"


def test_relay_listener_relays_outgoing_and_feeds_the_autowhitelist(proxy, recorded):
    content = make_message("lunch?", sender="bob@example.com", to="carol@customer.example")
    result = send(proxy, content, sender="bob@example.com", rcpts=["Carol@customer.example"],
                  relay=True)
    assert result.accepted, result.final
    [message] = recorded.wait_for(1)
    assert list(message.rcpt_tos) == ["Carol@customer.example"]
    assert message.header("X-Spam-Status") is None  # outgoing mail is never scored
    deadline = time.monotonic() + 5
    rows = []
    while time.monotonic() < deadline and not rows:
        with sqlite3.connect(proxy.data_dir / "postwall.db") as db:
            rows = db.execute(
                "SELECT value, expires_at FROM list_entries WHERE list_name='autowhitelist'"
            ).fetchall()
        time.sleep(0.1)
    assert rows and rows[0][0] == "carol@customer.example"


@pytest.mark.proxy_config({"relay_networks": ["192.0.2.0/24"]})
def test_relay_listener_refuses_clients_outside_relay_networks(proxy, recorded):
    with SMTPClient(*proxy.relay) as smtp:
        assert smtp.greeting.code == 554


def test_message_log_has_one_row_per_transaction(proxy, recorded):
    assert send(proxy, make_message("logged")).accepted
    send(proxy, make_message(), rcpts=["x@elsewhere.example"])
    deadline = time.monotonic() + 5
    rows = []
    while time.monotonic() < deadline and len(rows) < 2:
        with sqlite3.connect(proxy.data_dir / "postwall.db") as db:
            rows = db.execute("SELECT subject, action, reply FROM message_log").fetchall()
        time.sleep(0.1)
    actions = sorted(row[1] for row in rows)
    assert actions == ["deliver", "reject"]
    delivered = next(row for row in rows if row[1] == "deliver")
    assert delivered[0] == "logged" and delivered[2].startswith("250")


def test_size_limit_is_advertised_and_enforced(proxy_factory, recorded):
    proxy = proxy_factory(limits={"max_message_size": 50000})
    with SMTPClient(*proxy.inbound) as smtp:
        assert "SIZE 50000" in smtp.ehlo().text
        assert smtp.mail("alice@partner.example", ["SIZE=60000"]).code == 552
        assert smtp.mail("alice@partner.example").code == 250
        assert smtp.rcpt("bob@example.com").code == 250
        reply = smtp.data(make_message(body="x" * 70 + "\r\n") * 800)
        assert reply.code == 552
        assert smtp.noop().code == 250


def test_8bitmime_and_smtputf8_pass_through(proxy, recorded):
    content = make_message("grüße", "Grüße aus Köln\r\n").replace(
        b"text/plain", b"text/plain; charset=utf-8")
    result = send(proxy, content, sender="jürgen@partner.example",
                  mail_options=["BODY=8BITMIME", "SMTPUTF8"])
    assert result.accepted, result.final
    [message] = recorded.wait_for(1)
    assert message.content.endswith(content)
    assert message.mail_from == "jürgen@partner.example"


def test_pipelining_is_advertised(proxy):
    with SMTPClient(*proxy.inbound) as smtp:
        assert "PIPELINING" in smtp.ehlo().text


def test_metrics_count_messages(proxy, recorded):
    assert send(proxy, make_message()).accepted
    host, port = proxy.metrics
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        if 'postwall_messages_total{action="deliver",listener="inbound"} 1.0' in text:
            break
        time.sleep(0.2)
    assert 'postwall_messages_total{action="deliver",listener="inbound"} 1.0' in text
    assert "postwall_downstream_latency_seconds_bucket" in text


@pytest.mark.proxy_config({}, workers=2)
def test_two_workers_share_the_port(proxy, recorded):
    for index in range(20):
        assert send(proxy, make_message(f"m{index}")).accepted
    assert len(recorded.wait_for(20)) == 20


def test_starttls_when_a_certificate_is_configured(proxy_factory, recorded, tmp_path):
    import smtplib
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=postwall.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    proxy = proxy_factory(tls={"cert_file": str(cert), "key_file": str(key)})
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP(*proxy.inbound, timeout=15) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.example.net")
        assert not client.has_extn("starttls")
        client.sendmail("alice@partner.example", ["bob@example.com"], make_message("secret"))
    [message] = recorded.wait_for(1)
    assert b"with ESMTPS id" in message.content


def test_a_second_serve_on_the_same_data_dir_is_refused(proxy):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--config", str(proxy.config_path),
         "--workers", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 4
    assert "another postwall serve already runs" in result.stderr
    assert proxy.is_running


def test_help_lists_commands_and_bare_postmaster_is_accepted(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        help_reply = smtp.command("HELP")
        assert "MAIL" in help_reply.text and "RCPT" in help_reply.text
        assert smtp.command("HELP RCPT").code == 250
        assert smtp.mail("alice@partner.example").code == 250
        assert smtp.rcpt("Postmaster").code == 250
        assert smtp.data(make_message("to the postmaster")).code == 250
    [message] = recorded.wait_for(1)
    assert list(message.rcpt_tos) == ["postmaster@example.com"]
