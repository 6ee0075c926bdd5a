"""The test plumbing works without the proxy: Postfix on 127.0.0.1:125 -> the recorder."""

from __future__ import annotations

import smtplib
import uuid

import pytest

from tests.support.services import (
    POSTFIX_DEFERS,
    POSTFIX_REJECTS,
    PostfixInstance,
    RecordingServer,
    port_refuses,
    smtp_greeting,
    wait_until,
)
from tests.support.smtpclient import SMTPClient, send_message

pytestmark = pytest.mark.integration

BODY = (
    b"Plain line\r\n"
    b".a line that starts with a dot\r\n"
    b"trailing spaces   \r\n"
    b"8bit: gr\xc3\xbc\xc3\x9fe\r\n"
    b"\r\n"
    b"last line\r\n"
)


def _message(token: str) -> bytes:
    headers = (
        "From: Sender <sender@example.net>\r\n"
        "To: user@example.com\r\n"
        f"Subject: smoke {token}\r\n"
        f"Message-ID: <{token}@example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
    )
    return headers.encode() + b"\r\n" + BODY


def test_postfix_listens_on_the_configured_loopback_port(postfix: PostfixInstance) -> None:
    assert postfix.host == "127.0.0.1"
    greeting = smtp_greeting(postfix.host, postfix.port)
    assert greeting is not None and greeting.startswith("220 ")
    assert postfix.is_running and postfix.pid


def test_message_reaches_the_recorder_with_an_identical_body(
    postfix: PostfixInstance, recorded: RecordingServer
) -> None:
    token = uuid.uuid4().hex
    content = _message(token)
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as smtp:
        refused = smtp.sendmail("sender@example.net", ["user@example.com"], content)
    assert refused == {}

    (message,) = recorded.wait_for_match(header="Message-ID", value=token, timeout=15)
    assert message.mail_from == "sender@example.net"
    assert message.rcpt_tos == ("user@example.com",)
    assert message.body == BODY
    # Postfix prepends its Received header and otherwise leaves the headers alone.
    assert message.content.endswith(content)
    assert message.header("Received") is not None
    assert "postfix.postwall.test" in message.header_bytes.split(b"\r\n", 2)[1].decode()


def test_postfix_itself_rejects_and_defers_the_test_recipients(
    postfix: PostfixInstance, recorded: RecordingServer
) -> None:
    result = send_message(
        postfix.host,
        postfix.port,
        _message("refused"),
        mail_from="sender@example.net",
        rcpt_tos=[POSTFIX_REJECTS, POSTFIX_DEFERS],
    )
    rejected, deferred = result.rcpts[POSTFIX_REJECTS], result.rcpts[POSTFIX_DEFERS]
    assert (rejected.code, rejected.enhanced) == (550, "5.1.1")
    assert "rejected by postfix test map" in rejected.text
    assert (deferred.code, deferred.enhanced) == (450, "4.2.0")
    assert result.data is None

    with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:  # noqa: SIM117
        with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as smtp:
            smtp.sendmail("sender@example.net", [POSTFIX_REJECTS], _message("x"))
    assert excinfo.value.recipients[POSTFIX_REJECTS][0] == 550
    recorded.assert_no_messages(within=1.0)


def test_stopped_postfix_refuses_connections_and_serves_again(
    postfix: PostfixInstance, recorded: RecordingServer
) -> None:
    old_pid = postfix.pid
    with postfix.stopped():
        assert not postfix.is_running
        assert port_refuses(postfix.host, postfix.port)
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP(postfix.host, postfix.port, timeout=5)
    assert postfix.is_running
    assert postfix.pid != old_pid

    with SMTPClient(postfix.host, postfix.port, timeout=10) as smtp:
        assert smtp.greeting.code == 220
        assert smtp.ehlo().code == 250
        assert smtp.mail("sender@example.net").code == 250
        assert smtp.rcpt("user@example.com").code == 250
        assert smtp.data(_message("after-restart")).code == 250
        smtp.quit()
    recorded.wait_for_match(header="Subject", value="after-restart", timeout=15)


def test_recorder_stores_exact_octets_when_sent_to_directly(recorded: RecordingServer) -> None:
    payload = b"Subject: direct\r\n\r\nbare\nLF and .dot\r\n..stuffed\r\n.\r\n"
    with SMTPClient(recorded.host, recorded.port) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.net", ["BODY=8BITMIME"])
        smtp.rcpt("b@example.com")
        assert smtp.data_raw(payload).code == 250
    (message,) = recorded.wait_for(1)
    assert message.content == b"Subject: direct\r\n\r\nbare\nLF and .dot\r\n.stuffed\r\n"
    assert message.mail_options == ("BODY=8BITMIME",)
    assert message.peer[0] == "127.0.0.1"


def test_postfix_queues_while_the_internal_server_is_down_and_delivers_later(
    postfix: PostfixInstance, recorded: RecordingServer
) -> None:
    with recorded.stopped():
        with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as smtp:
            smtp.sendmail("sender@example.net", ["user@example.com"], _message("queued"))
        assert wait_until(lambda: "status=deferred" in postfix.maillog, 10)
        assert postfix.queue_ids()
    recorded.wait_for_match(header="Subject", value="queued", timeout=15)
    assert postfix.wait_queue_empty(timeout=5)
