"""SMTP smuggling against the real Postfix: only <CRLF>.<CRLF> ends a message.

A client hides a second transaction inside the first message's body behind a
non-standard end-of-data sequence (``<LF>.<LF>``, ``<CR>.<CR>``, ...). If the proxy and
the server behind it disagree on where the data ends, the hidden ``MAIL FROM``/``RCPT
TO``/``DATA`` run as real commands downstream and a forged message to a third party is
delivered. Postwall must see exactly one message and hand Postfix exactly one message,
with the envelope the client sent, whatever Postfix's own bare-newline policy is.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.services import (
    PostfixInstance,
    RecordingServer,
    postfix_settings,
    postfix_supports,
)
from tests.support.smtpclient import Reply, SMTPClient

SENDER = "alice@partner.example"
RECIPIENT = "bob@example.com"
VICTIM = "victim@example.com"
FORGED_SENDER = "admin@example.com"

SMUGGLED = (
    f"MAIL FROM:<{FORGED_SENDER}>\r\n"
    f"RCPT TO:<{VICTIM}>\r\n"
    "DATA\r\n"
    f"From: {FORGED_SENDER}\r\n"
    "\r\n"
    "smuggled\r\n"
).encode()
END = b"\r\n.\r\n"

# Every non-standard end-of-data sequence that some SMTP server has accepted.
VARIANTS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CRLF.CR": b"\r\n.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
}
# The ones a Postfix with `smtpd_forbid_bare_newline = no` takes as end of data (it reads
# lines ending in a bare LF), plus one it does not, for contrast.
POSTFIX_DANGEROUS = ["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CR"]

BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def headers(tag: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: smuggling {tag}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{tag}.{uuid.uuid4().hex}@partner.example>\r\n\r\n"
    ).encode()


def smuggling_payload(tag: str, sequence: bytes) -> bytes:
    """DATA octets: a first message hiding a second transaction behind `sequence`."""
    return headers(tag) + b"first message" + sequence + SMUGGLED + END


@contextlib.contextmanager
def send_raw(host: str, port: int, payload: bytes) -> Iterator[tuple[Reply, SMTPClient]]:
    """EHLO/MAIL/RCPT, then `payload` verbatim after DATA: (final reply, open client).

    The connection is closed when the block ends, also when an assertion fails in it (an
    open session would hold the proxy's shutdown at the end of the test)."""
    with SMTPClient(host, port, timeout=30) as smtp:
        assert smtp.greeting.code == 220, smtp.greeting
        assert smtp.ehlo().code == 250
        reply = smtp.mail(SENDER)
        assert reply.code == 250, reply
        reply = smtp.rcpt(RECIPIENT)
        assert reply.code == 250, reply
        yield smtp.data_raw(payload), smtp


def assert_session_in_sync(smtp: SMTPClient) -> None:
    """The next command gets its own reply: nothing of the payload ran as a command."""
    reply = smtp.noop()
    assert reply.code == 250, f"NOOP answered {reply} (a smuggled command's reply?)"
    reply = smtp.quit()
    assert reply.code == 221, reply
    smtp.close()


def settle(postfix: PostfixInstance) -> None:
    """Wait until Postfix has delivered (or given up on) everything it queued."""
    assert postfix.wait_queue_empty(timeout=20), f"queue not empty: {postfix.queue_ids()}"
    time.sleep(0.3)  # a delivery that left the queue is being written by the recorder


def assert_nothing_smuggled(recorded: RecordingServer) -> None:
    forged = [
        m for m in recorded.messages()
        if VICTIM in m.rcpt_tos or m.mail_from == FORGED_SENDER
    ]
    assert not forged, f"smuggled message delivered: {recorded._summary()}"


def assert_one_original_message(recorded: RecordingServer, tag: str) -> bytes:
    messages = recorded.messages()
    assert len(messages) == 1, f"expected exactly one message: {recorded._summary()}"
    [message] = messages
    assert message.mail_from == SENDER
    assert list(message.rcpt_tos) == [RECIPIENT]
    assert message.header("Subject") == f"smuggling {tag}"
    body = message.body
    # The hidden transaction is plain content of the one message.
    for line in (b"MAIL FROM:<admin@example.com>\r\n", b"RCPT TO:<victim@example.com>\r\n",
                 b"DATA\r\n", b"From: admin@example.com\r\n", b"smuggled\r\n"):
        assert line in body, f"{line!r} missing from the delivered body {body!r}"
    assert body.startswith(b"first message"), body
    assert BARE_LINE_END.search(message.content) is None, message.content
    return body


# ------------------------------------------------------------------------------------------
# Default policy: bare line ends are normalized, the message goes through as one message
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smuggling_variant_is_one_message(proxy, recorded, postfix, variant):
    with send_raw(*proxy.inbound, smuggling_payload(variant, VARIANTS[variant])) as (reply, smtp):
        assert reply.code == 250, f"{variant}: end of DATA answered {reply}"
        assert_session_in_sync(smtp)
    recorded.wait_for(1)
    settle(postfix)
    assert_nothing_smuggled(recorded)
    assert_one_original_message(recorded, variant)


@pytest.fixture(scope="class")
def lenient_postfix(postfix: PostfixInstance) -> Iterator[PostfixInstance]:
    """Postfix in its pre-fix behaviour: a bare-LF dot line ends the data."""
    if not postfix_supports("smtpd_forbid_bare_newline"):
        pytest.skip("this Postfix has no smtpd_forbid_bare_newline (it is always lenient)")
    with postfix_settings(postfix, smtpd_forbid_bare_newline="no"):
        yield postfix


@pytest.mark.usefixtures("lenient_postfix")
class TestLenientPostfix:
    """`smtpd_forbid_bare_newline = no` for the tests of this class: Postwall alone holds."""

    def test_control_postfix_alone_is_vulnerable(self, postfix, recorded):
        """Straight to this Postfix, <LF>.<LF> does smuggle a second message: the setting
        is really in force, so the Postwall tests below prove something."""
        payload = smuggling_payload("control", VARIANTS["LF.LF"])
        with send_raw(postfix.host, postfix.port, payload) as (reply, smtp):
            assert reply.code == 250, reply
            # Postfix now answers the smuggled MAIL, RCPT, DATA and the forged message.
            replies = [smtp.read_reply().code for _ in range(4)]
        assert replies == [250, 250, 354, 250], replies
        recorded.wait_for(2)
        settle(postfix)
        forged = [m.rcpt_tos for m in recorded.messages() if m.mail_from == FORGED_SENDER]
        assert forged == [(VICTIM,)], recorded._summary()

    @pytest.mark.parametrize("variant", POSTFIX_DANGEROUS)
    def test_postwall_alone_stops_smuggling(self, postfix, proxy_factory, recorded, variant):
        proxy = proxy_factory()  # started after the reload: its downstream sessions use `no`
        payload = smuggling_payload(variant, VARIANTS[variant])
        with send_raw(*proxy.inbound, payload) as (reply, smtp):
            assert reply.code == 250, f"{variant}: end of DATA answered {reply}"
            assert_session_in_sync(smtp)
        recorded.wait_for(1)
        settle(postfix)
        assert_nothing_smuggled(recorded)
        assert_one_original_message(recorded, variant)


# ------------------------------------------------------------------------------------------
# smtp.bare_line_ends: reject
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.proxy_config({"smtp": {"bare_line_ends": "reject"}})
def test_reject_policy_refuses_every_variant(proxy, recorded, postfix, variant):
    with send_raw(*proxy.inbound, smuggling_payload(variant, VARIANTS[variant])) as (reply, smtp):
        assert (reply.code, reply.enhanced) == (550, "5.5.2"), f"{variant}: {reply}"
        assert_session_in_sync(smtp)
    recorded.assert_no_messages(within=0.5)
    settle(postfix)
    assert recorded.messages() == [], recorded._summary()


@pytest.mark.proxy_config({"smtp": {"bare_line_ends": "reject"}})
def test_reject_policy_still_accepts_clean_mail(proxy, recorded):
    with send_raw(*proxy.inbound, headers("clean") + b"just CRLF lines\r\n" + END) as (reply, smtp):
        assert reply.code == 250, reply
        assert_session_in_sync(smtp)
    [message] = recorded.wait_for(1)
    assert message.body == b"just CRLF lines\r\n\r\n"


# ------------------------------------------------------------------------------------------
# Transparency (RFC 5321 4.5.2) and the last line
# ------------------------------------------------------------------------------------------


def test_dot_stuffed_lines_arrive_as_exact_octets(proxy, recorded):
    content = headers("dots") + (
        b".x\r\n"            # sent as ..x
        b"..y\r\n"           # sent as ...y
        b".\r\n"             # a dot-only line, sent as ..
        b"..\r\n"            # sent as ...
        b"middle\r\n"
        b". leading dot and space\r\n"
        b"\r\n"
        b".\r\n"             # a dot-only line last, right before the terminator
    )
    lines = content.split(b"\r\n")[:-1]
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    assert stuffed.count(b"\r\n..") == 6
    with send_raw(*proxy.inbound, stuffed + b".\r\n") as (reply, smtp):
        assert reply.code == 250, reply
        assert_session_in_sync(smtp)
    [message] = recorded.wait_for(1)
    assert message.content.endswith(content), message.content
    added = message.content[: -len(content)]
    assert b"\r\n\r\n" not in added  # only header fields on top


@pytest.mark.parametrize(
    ("data", "ending"),
    [
        # The last line has no CRLF of its own: the terminator's CRLF ends it.
        pytest.param(b"last line without CRLF", b"last line without CRLF\r\n",
                     id="no-final-crlf"),
        # Ends with an empty line: exactly that empty line, no more, no less.
        pytest.param(b"last line\r\n", b"last line\r\n\r\n", id="empty-last-line"),
        # A last line of just a dot, stuffed, then the terminator.
        pytest.param(b"text\r\n..", b"text\r\n.\r\n", id="dot-last-line"),
    ],
)
def test_last_line_ending_is_kept_exactly(proxy, recorded, data, ending):
    with send_raw(*proxy.inbound, headers("ending") + data + END) as (reply, smtp):
        assert reply.code == 250, reply
        assert_session_in_sync(smtp)
    [message] = recorded.wait_for(1)
    assert message.body == ending, message.body


def test_headers_only_message_without_final_crlf(proxy, recorded):
    payload = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: no body".encode() + END
    with send_raw(*proxy.inbound, payload) as (reply, smtp):
        assert reply.code == 250, reply
        assert_session_in_sync(smtp)
    [message] = recorded.wait_for(1)
    assert message.header("Subject") == "no body"
    assert message.content.endswith(b"Subject: no body\r\n"), message.content
