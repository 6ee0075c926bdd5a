"""Penalty box, rate limits and the early-talker test through the real proxy, with two
workers. Each test connects from its own 127.0.0.x source address, so that it is a
client of its own; relay_networks does not include them (trusted hosts are exempt)."""

from __future__ import annotations

import socket
import time

from click.testing import CliRunner

from appliance.cli import main
from appliance.storage.facade import Storage
from tests.support.services import wait_until
from tests.support.smtpclient import SMTPClient, send_message

UNTRUSTED = {"relay_networks": ["10.0.0.0/8"]}
MESSAGE = (
    b"From: <alice@partner.example>\r\nTo: <bob@example.com>\r\nSubject: hi\r\n"
    b"Message-ID: <hi@partner.example>\r\n\r\nHello.\r\n"
)


def greeting(proxy, source: str):
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        return smtp.greeting


def refused_everywhere(proxy, source: str, code: int, tries: int = 6) -> bool:
    """`tries` connections in a row, spread over the workers, all get `code`."""
    return all(greeting(proxy, source).code == code for _ in range(tries))


def harvest(proxy, source: str, count: int) -> None:
    """One session trying `count` recipients that do not exist here (550 each)."""
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        assert smtp.greeting.code == 220
        smtp.ehlo()
        assert smtp.mail("harvester@spam.example").code == 250
        for n in range(count):
            assert smtp.rcpt(f"user{n}@elsewhere.example").code == 550
        smtp.quit()


def cli(proxy, *args: str):
    return CliRunner().invoke(main, [*args, "--config", str(proxy.config_path)])


# -- penalty box --------------------------------------------------------------------------


def test_rejected_recipients_put_a_client_in_the_penalty_box_until_cleared(
    proxy_factory, recorded
):
    proxy = proxy_factory(
        UNTRUSTED, filters={"penalty_box": {"tempfail_score": 5, "reject_score": 12}},
        workers=2,
    )
    harvest(proxy, "127.0.0.3", 6)  # 6 points
    # Every worker refuses it (the other one after its next refresh, a few seconds).
    assert wait_until(lambda: refused_everywhere(proxy, "127.0.0.3", 421), 8.0, 0.3)
    with SMTPClient(*proxy.inbound, source="127.0.0.3") as smtp:
        assert smtp.greeting.enhanced == "4.7.0"
    assert greeting(proxy, "127.0.0.4").code == 220  # other clients are not affected

    with Storage.open(proxy.data_dir) as storage:  # written in the background
        assert wait_until(lambda: storage.penalty.get("127.0.0.3") is not None, 5.0)
    shown = cli(proxy, "penalty", "show", "127.0.0.3")
    assert shown.exit_code == 0, shown.output
    assert "127.0.0.3\tscore=6.0\ttempfailed (421)" in shown.output
    assert "rejected recipient" in shown.output

    cleared = cli(proxy, "penalty", "clear", "127.0.0.3")
    assert cleared.exit_code == 0 and "cleared 127.0.0.3" in cleared.output
    assert wait_until(lambda: refused_everywhere(proxy, "127.0.0.3", 220), 8.0, 0.3)
    result = send_message(*proxy.inbound, MESSAGE, mail_from="alice@partner.example",
                          rcpt_tos=["bob@example.com"], source="127.0.0.3")
    assert result.accepted, result.final
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(
            lambda: storage.messagelog.search(client_ip="127.0.0.3", action="tempfail"), 5.0
        )
        refusals = storage.messagelog.search(client_ip="127.0.0.3", action="tempfail")
    assert refusals and refusals[0].symbols[-1][0] == "PENALTY_BOX"
    assert refusals[0].reply.startswith("421 4.7.0")


def test_more_points_mean_554_and_the_score_decays(proxy_factory, recorded):
    # One worker: another one would see the points only after its refresh (~2 s), when
    # a score with a half-life of 1 s is long gone.
    proxy = proxy_factory(UNTRUSTED, filters={"penalty_box": {
        "tempfail_score": 5, "reject_score": 10, "half_life": 1.0, "forget_below": 0.1,
    }})
    harvest(proxy, "127.0.0.5", 14)
    # 14 points halve every second: 554 now, 421 from about 0.5 s, admitted from 1.5 s.
    first = greeting(proxy, "127.0.0.5")
    assert (first.code, first.enhanced) == (554, "5.7.1")
    assert wait_until(lambda: greeting(proxy, "127.0.0.5").code == 421, 2.0, 0.1)
    assert wait_until(lambda: greeting(proxy, "127.0.0.5").code == 220, 3.0, 0.1)


def test_blacklisted_sender_and_protocol_errors_cost_points(proxy_factory, recorded):
    proxy = proxy_factory(UNTRUSTED, filters={
        "penalty_box": {"tempfail_score": 20},
        "address_lists": {"blacklist": ["@spam.example"]},
    })
    with SMTPClient(*proxy.inbound, source="127.0.0.6") as smtp:
        smtp.ehlo()
        assert smtp.mail("x@spam.example").code == 550  # blocked message: 4 points
        assert smtp.command("FOO").code == 500  # protocol error: 1 point
        smtp.quit()
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(lambda: storage.penalty.get("127.0.0.6") is not None, 5.0)
        entry = storage.penalty.get("127.0.0.6")
    assert entry is not None and 4.9 < entry.score < 5.1, entry


def test_trusted_clients_collect_no_points(proxy_factory, recorded):
    proxy = proxy_factory(
        relay_networks=["127.0.0.7/32"],
        filters={"penalty_box": {"tempfail_score": 2}, "ip_lists": {"allow": ["127.0.0.8/32"]}},
    )
    harvest(proxy, "127.0.0.7", 5)
    with SMTPClient(*proxy.inbound, source="127.0.0.8") as smtp:
        smtp.ehlo()
        smtp.mail("a@partner.example")
        for n in range(5):
            smtp.rcpt(f"u{n}@elsewhere.example")
    time.sleep(0.5)
    assert greeting(proxy, "127.0.0.7").code == 220
    assert greeting(proxy, "127.0.0.8").code == 220
    with Storage.open(proxy.data_dir) as storage:
        assert storage.penalty.count() == 0


# -- rate limits ----------------------------------------------------------------------


def test_connection_rate_is_counted_across_workers(proxy_factory, recorded):
    proxy = proxy_factory(UNTRUSTED, filters={"rate_limits": {"connections_per_minute": 5}},
                          workers=2)
    assert [greeting(proxy, "127.0.0.9").code for _ in range(5)] == [220] * 5
    over = greeting(proxy, "127.0.0.9")
    assert (over.code, over.enhanced) == (421, "4.7.0") and "per minute" in over.text
    assert greeting(proxy, "127.0.0.10").code == 220  # another client has its own count
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(lambda: storage.messagelog.search(client_ip="127.0.0.9"), 5.0)
        [row] = storage.messagelog.search(client_ip="127.0.0.9")
    assert [name for name, _, _ in row.symbols] == ["CONNECTION_RATE"]


def test_message_rate_refuses_mail_from_at_451(proxy_factory, recorded):
    proxy = proxy_factory(UNTRUSTED, filters={"rate_limits": {"messages_per_hour": 3}},
                          workers=2)
    with SMTPClient(*proxy.inbound, source="127.0.0.11") as smtp:
        smtp.ehlo()
        for _ in range(3):
            assert smtp.mail("alice@partner.example").code == 250
            assert smtp.rcpt("bob@example.com").code == 250
            assert smtp.data(MESSAGE).code == 250
        over = smtp.mail("alice@partner.example")
        assert (over.code, over.enhanced) == (451, "4.7.1") and "per hour" in over.text
    # The count is the client's on every worker, on a new connection too.
    with SMTPClient(*proxy.inbound, source="127.0.0.11") as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@partner.example").code == 451
    recorded.wait_for(3)


def test_relay_networks_are_not_rate_limited(proxy_factory, recorded):
    proxy = proxy_factory(relay_networks=["127.0.0.12/32"],
                          filters={"rate_limits": {"connections_per_minute": 2}})
    assert [greeting(proxy, "127.0.0.12").code for _ in range(4)] == [220] * 4


# -- early talker ---------------------------------------------------------------------


def raw_connect(proxy, source: str) -> socket.socket:
    sock = socket.create_connection(proxy.inbound, timeout=10, source_address=(source, 0))
    return sock


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


EARLY = {**UNTRUSTED, "filters": {"early_talker": {"greeting_delay": 1.0}}}


def test_a_client_talking_before_the_greeting_is_refused_and_penalised(proxy_factory, recorded):
    proxy = proxy_factory(EARLY, workers=2)
    started = time.monotonic()
    with raw_connect(proxy, "127.0.0.13") as sock:
        sock.sendall(b"EHLO bot.example\r\nMAIL FROM:<spam@bot.example>\r\n")
        reply = read_line(sock)
        assert reply.startswith(b"554 5.5.0 "), reply
        assert read_line(sock) == b""  # closed: the early commands were never answered
    assert time.monotonic() - started < 1.0  # refused at once, not after the delay
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(lambda: storage.penalty.get("127.0.0.13") is not None, 5.0)
        entry = storage.penalty.get("127.0.0.13")
        assert entry is not None and entry.last_reason == "talked before the greeting"
        assert wait_until(lambda: storage.messagelog.search(client_ip="127.0.0.13"), 5.0)
        [row] = storage.messagelog.search(client_ip="127.0.0.13")
    assert row.symbols[0][0] == "EARLY_TALKER" and "EHLO bot.example" in row.symbols[0][2]


def test_a_polite_client_waits_for_the_delay_and_passes(proxy_factory, recorded):
    proxy = proxy_factory(EARLY)
    started = time.monotonic()
    result = send_message(*proxy.inbound, MESSAGE, mail_from="alice@partner.example",
                          rcpt_tos=["bob@example.com"], source="127.0.0.14")
    assert time.monotonic() - started >= 1.0
    assert result.accepted, result.final
    [message] = recorded.wait_for(1)
    assert "EARLY_TALKER" not in (message.header("X-Spam-Symbols") or "")


def command(sock: socket.socket, replies, line: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """Send one command; return the last line of its (possibly multi-line) reply."""
    sock.sendall(line + b"\r\n")
    while True:
        reply = replies.readline()
        if reply[3:4] != b"-":
            return reply


def test_in_score_mode_early_talk_is_discarded_and_scored(proxy_factory, recorded):
    proxy = proxy_factory(UNTRUSTED, filters={
        "early_talker": {"greeting_delay": 1.0, "mode": "score"},
    })
    with raw_connect(proxy, "127.0.0.15") as sock, sock.makefile("rb") as replies:
        sock.sendall(b"NOOP\r\n")
        assert replies.readline().startswith(b"220 ")
        # The early NOOP was not read as a command: the next reply answers EHLO.
        assert command(sock, replies, b"EHLO client.example.net").startswith(b"250 ")
        assert command(sock, replies, b"MAIL FROM:<alice@partner.example>").startswith(b"250")
        assert command(sock, replies, b"RCPT TO:<bob@example.com>").startswith(b"250 ")
        assert command(sock, replies, b"DATA").startswith(b"354 ")
        assert command(sock, replies, MESSAGE + b".").startswith(b"250 ")
        assert command(sock, replies, b"QUIT").startswith(b"221 ")
    [message] = recorded.wait_for(1)
    assert "EARLY_TALKER" in (message.header("X-Spam-Symbols") or "")
    with SMTPClient(*proxy.inbound, source="127.0.0.16") as smtp:
        assert smtp.greeting.code == 220


def test_a_client_leaving_during_the_delay_is_only_logged(proxy_factory, recorded):
    proxy = proxy_factory(EARLY)
    raw_connect(proxy, "127.0.0.17").close()
    assert wait_until(
        lambda: "disconnected before the greeting" in proxy.stderr_text(), 5.0
    )
    assert greeting(proxy, "127.0.0.17").code == 220
