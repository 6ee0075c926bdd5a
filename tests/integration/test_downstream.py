"""Nothing is acknowledged that Postfix did not accept (DESIGN.md "Mail flow": in-line).

The proxy answers 250 at the end of DATA only after Postfix answered 250; Postfix's own
refusals reach the client with their codes; when Postfix is down, slow or restarting the
client gets a 4xx and retries. The proof is at the internal mail server (the recorder):
every message a client saw acknowledged is there, exactly once.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.support.services import (
    POSTFIX_DEFERS,
    POSTFIX_REJECTS,
    PostfixInstance,
    postfix_settings,
    wait_until,
)
from tests.support.smtpclient import SMTPClient, SMTPProtocolError, send_message

SENDER = "alice@partner.example"
RECIPIENT = "bob@example.com"
TEST_ID_RE = re.compile(rb"^X-Test-Id: (\S+)\r?$", re.MULTILINE)
QUEUE_ID_RE = re.compile(rb"by postfix\.postwall\.test \(Postfix\) with E?SMTP id (\w+)")


def make_message(test_id: str, body: str = "Hello,\r\nsee you.\r\n", *,
                 to: str = RECIPIENT) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{to}>\r\nSubject: message {test_id}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{test_id}@partner.example>\r\n"
        f"X-Test-Id: {test_id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}"
    ).encode()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def id_of(content: bytes) -> str | None:
    match = TEST_ID_RE.search(content)
    return match.group(1).decode() if match else None


def settle(postfix: PostfixInstance, timeout: float = 30.0) -> None:
    """Wait until Postfix has delivered everything it queued."""
    assert postfix.wait_queue_empty(timeout=timeout), f"queue not empty: {postfix.queue_ids()}"
    time.sleep(0.3)  # a delivery that just left the queue is being written by the recorder


def wait_for_log(proxy, needle: str, timeout: float = 10.0, *, start: int = 0) -> None:
    found = wait_until(lambda: needle in proxy.stderr_text()[start:], timeout)
    assert found, f"{needle!r} not logged within {timeout:g}s:\n{proxy.stderr_text()[-3000:]}"


# ------------------------------------------------------------------------------------------
# 1. Postfix's own refusals pass through
# ------------------------------------------------------------------------------------------


def test_postfix_rejection_passes_through_with_its_code_and_text(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER).code == 250
        reply = smtp.rcpt(POSTFIX_REJECTS)
        assert reply.code == 550 and reply.enhanced == "5.1.1", reply
        assert "rejected by postfix test map" in reply.text, reply
        # No recipient: the transaction cannot reach DATA.
        assert smtp.command("DATA").code == 503
    recorded.assert_no_messages(within=0.5)


def test_postfix_deferral_passes_through_as_450(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER).code == 250
        reply = smtp.rcpt(POSTFIX_DEFERS)
        assert reply.code == 450 and reply.enhanced == "4.2.0", reply
        assert "deferred by postfix test map" in reply.text, reply
    recorded.assert_no_messages(within=0.5)


def test_mixed_transaction_delivers_to_the_accepted_recipient_only(proxy, recorded, postfix):
    test_id = new_id("mixed")
    result = send_message(*proxy.inbound, make_message(test_id), mail_from=SENDER,
                          rcpt_tos=[POSTFIX_REJECTS, RECIPIENT, POSTFIX_DEFERS])
    assert result.rcpts[POSTFIX_REJECTS].code == 550
    assert result.rcpts[RECIPIENT].code == 250
    assert result.rcpts[POSTFIX_DEFERS].code == 450
    assert result.accepted, result.final
    recorded.wait_for(1)
    settle(postfix)
    [message] = recorded.messages()
    assert list(message.rcpt_tos) == [RECIPIENT]
    assert id_of(message.content) == test_id


# ------------------------------------------------------------------------------------------
# 2. Postfix down
# ------------------------------------------------------------------------------------------


def test_postfix_stopped_gives_451_at_rcpt_then_recovers(proxy, recorded, postfix):
    # Warm the downstream pool first: its connections die with Postfix.
    assert send_message(*proxy.inbound, make_message(new_id("warm")), mail_from=SENDER,
                        rcpt_tos=[RECIPIENT]).accepted
    recorded.wait_for(1)
    settle(postfix)
    recorded.clear()
    with postfix.stopped():
        down_id = new_id("down")
        result = send_message(*proxy.inbound, make_message(down_id), mail_from=SENDER,
                              rcpt_tos=[RECIPIENT])
        reply = result.rcpts[RECIPIENT]
        assert reply.code == 451 and reply.enhanced == "4.4.1", reply
        assert result.data is None
    up_id = new_id("up")
    result = send_message(*proxy.inbound, make_message(up_id), mail_from=SENDER,
                          rcpt_tos=[RECIPIENT])
    assert result.accepted, result.final
    recorded.wait_for(1)
    settle(postfix)
    assert [id_of(m.content) for m in recorded.messages()] == [up_id]


def test_postfix_restart_between_recipients_loses_no_accepted_recipient(
    proxy, recorded, postfix
):
    """A recipient acknowledged with 250 must get the message if DATA is acknowledged.

    Postfix goes away after the first RCPT (its session, holding that recipient, dies)
    and is back for the third: whatever the proxy answers, it must not say 250 at DATA
    for a message that Postfix accepted for only some of the acknowledged recipients.
    """
    test_id = new_id("rcpt-restart")
    rcpts = ["first@example.com", "second@example.com", "third@example.com"]
    replies = {}
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER).code == 250
        replies[rcpts[0]] = smtp.rcpt(rcpts[0])
        assert replies[rcpts[0]].code == 250
        with postfix.stopped():
            replies[rcpts[1]] = smtp.rcpt(rcpts[1])
            assert replies[rcpts[1]].transient, replies[rcpts[1]]
        replies[rcpts[2]] = smtp.rcpt(rcpts[2])
        data = smtp.data(make_message(test_id))
    acknowledged = {r for r, reply in replies.items() if reply.code == 250}
    if data.code != 250:
        assert data.transient, data  # the client retries the whole message: fine
        settle(postfix)
        return
    recorded.wait_for(1)
    settle(postfix)
    delivered = {
        rcpt for m in recorded.messages() if id_of(m.content) == test_id
        for rcpt in m.rcpt_tos
    }
    summary = {r: str(reply) for r, reply in replies.items()}
    assert acknowledged <= delivered, (
        f"DATA answered {data} but only {sorted(delivered)} got the message; "
        f"RCPT replies: {summary}"
    )


# ------------------------------------------------------------------------------------------
# 3. Many sessions while Postfix restarts: nothing acknowledged but missing
# ------------------------------------------------------------------------------------------


def remove_interrupted_queue_files(postfix: PostfixInstance) -> list[str]:
    """Remove what a cleanup process killed mid-message leaves: ``incoming/<n>.<pid>``.

    Such a file never became a queue file (it is renamed to its queue id when the message
    is complete, before smtpd answers 250), so it holds nothing anyone acknowledged. Left
    there, it stops the next ``postfix start`` for good: postsuper warns about the "bogus
    file name" and cannot write that warning to the test's maillog_file (fatal), and the
    fixture's queue_ids() would count it forever.
    """
    incoming = postfix.queue_dir / "incoming"
    removed = []
    for path in incoming.rglob("*"):
        if path.is_file() and "." in path.name:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


@dataclass
class LoadRun:
    total: int
    outcomes: dict[str, str] = field(default_factory=dict)  # id -> "250" / "RCPT 451" / ...
    acked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0

    def take(self) -> int | None:
        with self.lock:
            if self.next_index >= self.total:
                return None
            self.next_index += 1
            return self.next_index - 1

    def record(self, test_id: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[test_id] = outcome
            if outcome == "DATA 250":
                self.acked += 1


def _load_worker(run: LoadRun, host: str, port: int, prefix: str) -> None:
    smtp: SMTPClient | None = None
    while (index := run.take()) is not None:
        test_id = f"{prefix}-{index:04d}"
        stage = "connect"
        try:
            if smtp is None:
                smtp = SMTPClient(host, port, timeout=60)
                if smtp.greeting.code != 220:
                    run.record(test_id, f"greeting {smtp.greeting.code}")
                    smtp.close()
                    smtp = None
                    time.sleep(0.5)
                    continue
                stage = "EHLO"
                smtp.ehlo()
            stage = "MAIL"
            reply = smtp.mail(SENDER)
            if reply.code == 250:
                stage = "RCPT"
                reply = smtp.rcpt(RECIPIENT)
            if reply.code == 250:
                stage = "DATA"
                reply = smtp.data(make_message(test_id))
            run.record(test_id, f"{stage} {reply.code}")
            if reply.code != 250:
                if stage != "DATA":
                    smtp.rset()
                time.sleep(0.5)  # a sending MTA retries later, not in a tight loop
        except (OSError, SMTPProtocolError) as exc:
            run.record(test_id, f"{stage} error {type(exc).__name__}")
            if smtp is not None:
                smtp.close()
            smtp = None
            time.sleep(0.5)
    if smtp is not None:
        with contextlib.suppress(OSError, SMTPProtocolError):
            smtp.quit()
        smtp.close()


@pytest.mark.timeout(240)
def test_500_messages_20_sessions_postfix_restart_loses_and_duplicates_nothing(
    proxy_factory, recorded, postfix
):
    proxy = proxy_factory(workers=2, limits={"max_connections_per_ip": 100})
    run = LoadRun(total=500)
    prefix = new_id("load")
    started = time.monotonic()
    threads = [
        threading.Thread(target=_load_worker, args=(run, *proxy.inbound, prefix), daemon=True)
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: run.acked >= 150 or not any(t.is_alive() for t in threads), 120)
    acked_at_stop = run.acked
    assert acked_at_stop >= 150, f"only {acked_at_stop} acked: {Counter(run.outcomes.values())}"
    stop_at = time.monotonic()
    postfix.stop()
    interrupted = remove_interrupted_queue_files(postfix)
    time.sleep(2.0)
    postfix.start()
    down_for = time.monotonic() - stop_at
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "load threads did not finish"
    elapsed = time.monotonic() - started
    assert len(run.outcomes) == 500

    acknowledged = {i for i, outcome in run.outcomes.items() if outcome == "DATA 250"}
    settle(postfix, timeout=60)
    arrived = Counter()
    queue_ids: dict[str, set[bytes]] = {}
    for message in recorded.messages():
        test_id = id_of(message.content)
        if test_id is None or not test_id.startswith(prefix):
            continue
        arrived[test_id] += 1
        queue_id = QUEUE_ID_RE.search(message.content)
        queue_ids.setdefault(test_id, set()).add(queue_id.group(1) if queue_id else b"?")

    outcomes = Counter(run.outcomes.values())
    transient = sum(n for o, n in outcomes.items() if re.search(r" 4\d\d$", o))
    missing = sorted(acknowledged - set(arrived))
    # Two copies from two Postfix queue files: the proxy handed the message over twice.
    duplicates = {i: sorted(q) for i, q in queue_ids.items() if len(q) > 1}
    # Two copies from one queue file: Postfix delivered to the internal server and was
    # stopped before it could mark the recipient done, so it delivered again after the
    # restart. Postfix's at-least-once hand-over, downstream of the proxy: reported only.
    redelivered = {i: n for i, n in arrived.items() if n > 1 and len(queue_ids[i]) == 1}
    unacked_delivered = sorted(set(arrived) - acknowledged)
    print(
        f"\n500-message run: {elapsed:.1f}s, Postfix stopped after {acked_at_stop} acks for "
        f"{down_for:.1f}s; acknowledged={len(acknowledged)} 4xx={transient} "
        f"outcomes={dict(outcomes)}; arrived={len(arrived)} missing={len(missing)} "
        f"proxy-duplicates={len(duplicates)} postfix-redelivered={len(redelivered)} "
        f"delivered-without-250={len(unacked_delivered)} "
        f"interrupted-queue-files={len(interrupted)}"
    )
    assert not missing, f"acknowledged but never delivered: {missing[:20]} ({len(missing)})"
    assert not duplicates, f"handed to Postfix twice: {duplicates}"
    # The outage must really have hit the run, or the test proves nothing.
    assert transient > 0, outcomes
    assert len(acknowledged) > acked_at_stop, "nothing acknowledged after Postfix came back"
    assert all(o == "DATA 250" or re.search(r" (4\d\d|error \w+)$", o) for o in outcomes), (
        outcomes
    )


# ------------------------------------------------------------------------------------------
# 4. Postfix slow: a downstream that stalls
# ------------------------------------------------------------------------------------------


class StallingSMTPServer:
    """A downstream in the test process that answers 220/EHLO/MAIL/RCPT/DATA(354) but never
    the final dot (mode "data"), or accepts and never greets (mode "greeting")."""

    def __init__(self, mode: str) -> None:
        assert mode in ("data", "greeting")
        self.mode = mode
        self.stop_event = threading.Event()
        self.data_received = threading.Event()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> StallingSMTPServer:
        self.acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            if self.mode == "greeting":
                self._stall(conn)
                return
            conn.sendall(b"220 stall.test ESMTP\r\n")
            buffer = b""
            while not self.stop_event.is_set():
                line, buffer = self._readline(conn, buffer, b"\r\n")
                if line is None:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-stall.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    _, buffer = self._readline(conn, buffer, b"\r\n.\r\n")
                    self.data_received.set()
                    self._stall(conn)
                    return
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:  # HELO, MAIL, RCPT, RSET, NOOP
                    conn.sendall(b"250 ok\r\n")

    def _readline(self, conn: socket.socket, buffer: bytes, end: bytes
                  ) -> tuple[bytes | None, bytes]:
        while end not in buffer:
            if self.stop_event.is_set():
                return None, buffer
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return None, buffer
            buffer += chunk
        line, _, rest = buffer.partition(end)
        return line, rest

    def _stall(self, conn: socket.socket) -> None:
        """Read and ignore until the peer closes or the test ends."""
        while not self.stop_event.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


def test_downstream_stalling_after_data_gives_451_within_the_timeout(proxy_factory, recorded):
    with StallingSMTPServer("data") as stall:
        proxy = proxy_factory(downstream={"host": "127.0.0.1", "port": stall.port, "timeout": 2})
        with SMTPClient(*proxy.inbound) as smtp:
            smtp.ehlo()
            assert smtp.mail(SENDER).code == 250
            assert smtp.rcpt(RECIPIENT).code == 250
            started = time.monotonic()
            reply = smtp.data(make_message(new_id("stall")))
            elapsed = time.monotonic() - started
            assert stall.data_received.is_set()
            assert reply.code == 451 and reply.enhanced == "4.4.2", reply
            assert 1.5 <= elapsed <= 3.5, f"451 after {elapsed:.2f}s (downstream timeout 2s)"
            # The session goes on: the client may retry right away.
            assert smtp.noop().code == 250


def test_downstream_stalling_greeting_gives_451_at_rcpt(proxy_factory, recorded):
    with StallingSMTPServer("greeting") as stall:
        # `timeout` bounds every downstream reply, the greeting too (connect_timeout only
        # the TCP connect, and it stays at its default of 10 s here).
        proxy = proxy_factory(downstream={"host": "127.0.0.1", "port": stall.port, "timeout": 2})
        with SMTPClient(*proxy.inbound) as smtp:
            smtp.ehlo()
            assert smtp.mail(SENDER).code == 250
            started = time.monotonic()
            reply = smtp.rcpt(RECIPIENT)
            elapsed = time.monotonic() - started
            assert stall.connections >= 1
            assert reply.code == 451 and reply.enhanced == "4.4.1", reply
            assert elapsed <= 3.5, f"451 after {elapsed:.2f}s (downstream timeout 2s)"
            assert smtp.noop().code == 250


# ------------------------------------------------------------------------------------------
# 5. Postfix's size limit below the proxy's
# ------------------------------------------------------------------------------------------


def test_postfix_size_limit_below_the_proxys_reaches_the_client(postfix, proxy_factory, recorded):
    big = make_message(new_id("big"), body=("x" * 76 + "\r\n") * 4000)  # ~310 KB
    assert 300_000 < len(big) < 1_000_000
    with postfix_settings(postfix, message_size_limit="100000"):
        proxy = proxy_factory(limits={"max_message_size": 1_000_000})
        with SMTPClient(*proxy.inbound) as smtp:
            smtp.ehlo()
            assert smtp.features.get("SIZE") == "1000000"
            # Undeclared size: Postfix finds out at the end of DATA.
            assert smtp.mail(SENDER).code == 250
            assert smtp.rcpt(RECIPIENT).code == 250
            reply = smtp.data(big)
            assert reply.code == 552 and reply.enhanced == "5.3.4", reply
            assert "too big" in reply.text, reply
            # Declared size: Postfix refuses the downstream MAIL, heard at RCPT.
            assert smtp.mail(SENDER, [f"SIZE={len(big)}"]).code == 250
            reply = smtp.rcpt(RECIPIENT)
            assert reply.code == 552 and reply.enhanced == "5.3.4", reply
            smtp.rset()
            # A small message still goes through on the same session.
            assert smtp.mail(SENDER).code == 250
            assert smtp.rcpt(RECIPIENT).code == 250
            small_id = new_id("small")
            assert smtp.data(make_message(small_id)).code == 250
        recorded.wait_for(1)
        settle(postfix)
        assert [id_of(m.content) for m in recorded.messages()] == [small_id]


# ------------------------------------------------------------------------------------------
# 6. SIGTERM drains
# ------------------------------------------------------------------------------------------


def test_sigterm_lets_an_open_transaction_finish_then_exits_0(proxy, recorded, postfix):
    test_id = new_id("drain")
    smtp = SMTPClient(*proxy.inbound)
    try:
        smtp.ehlo()
        assert smtp.mail(SENDER).code == 250
        assert smtp.rcpt(RECIPIENT).code == 250
        proxy.send_signal(signal.SIGTERM)
        wait_for_log(proxy, "draining")
        # New connections are refused (listener closed) or told 421.
        try:
            with SMTPClient(*proxy.inbound, timeout=5) as late:
                assert late.greeting.code == 421, late.greeting
        except (ConnectionRefusedError, SMTPProtocolError):
            pass
        time.sleep(1.0)  # the session stays served while the proxy drains
        reply = smtp.data(make_message(test_id))
        assert reply.code == 250, reply
        assert smtp.quit().code == 221
    finally:
        smtp.close()
    assert proxy.wait(timeout=15) == 0, proxy.stderr_text()[-3000:]
    recorded.wait_for(1)
    settle(postfix)
    assert [id_of(m.content) for m in recorded.messages()] == [test_id]


# ------------------------------------------------------------------------------------------
# 7. SIGHUP reloads without dropping sessions; an invalid file changes nothing
# ------------------------------------------------------------------------------------------


def _blacklisted(smtp: SMTPClient) -> bool:
    reply = smtp.mail("spammer@spam.example")
    smtp.rset()
    return reply.code == 550 and reply.enhanced == "5.7.1"


def test_sighup_applies_new_config_without_dropping_an_open_session(proxy, recorded, postfix):
    before_id, after_id = new_id("before"), new_id("after")
    with SMTPClient(*proxy.inbound) as early:
        early.ehlo()
        assert not _blacklisted(early)
        # A transaction open across the reload.
        assert early.mail(SENDER).code == 250
        assert early.rcpt(RECIPIENT).code == 250

        mark = len(proxy.stderr_text())
        proxy.update_config({"filters": {"address_lists": {"blacklist": ["@spam.example"]}}})
        proxy.send_signal(signal.SIGHUP)
        wait_for_log(proxy, "configuration reloaded", start=mark)

        assert early.data(make_message(before_id)).code == 250
        # The next transaction on the same session already has the new configuration.
        assert _blacklisted(early)
        with SMTPClient(*proxy.inbound) as late:
            late.ehlo()
            assert _blacklisted(late)
            assert late.mail(SENDER).code == 250
            assert late.rcpt(RECIPIENT).code == 250
            assert late.data(make_message(after_id)).code == 250
    recorded.wait_for(2)
    settle(postfix)
    assert sorted(id_of(m.content) for m in recorded.messages()) == sorted(
        [before_id, after_id]
    )


def test_sighup_with_an_invalid_config_keeps_the_old_one_serving(proxy, recorded, postfix):
    test_id = new_id("kept")
    with SMTPClient(*proxy.inbound) as early:
        early.ehlo()
        mark = len(proxy.stderr_text())
        proxy.update_config({
            "filters": {"address_lists": {"blacklist": ["@spam.example"]}},
            "limits": {"max_recipients": "lots"},
        })
        proxy.send_signal(signal.SIGHUP)
        wait_for_log(proxy, "not reloading", start=mark)
        [logged] = [line for line in proxy.stderr_text()[mark:].splitlines()
                    if "not reloading" in line]
        assert " ERROR " in logged, logged
        assert "max_recipients" in proxy.stderr_text()[mark:]  # names the bad key
        time.sleep(0.5)
        assert proxy.is_running
        assert "configuration reloaded" not in proxy.stderr_text()[mark:]
        # The open session goes on, with the old configuration (no blacklist).
        assert not _blacklisted(early)
        with SMTPClient(*proxy.inbound) as late:
            late.ehlo()
            assert not _blacklisted(late)
        assert early.mail(SENDER).code == 250
        assert early.rcpt(RECIPIENT).code == 250
        assert early.data(make_message(test_id)).code == 250
    recorded.wait_for(1)
    settle(postfix)
    assert [id_of(m.content) for m in recorded.messages()] == [test_id]
