"""Greylisting through the real proxy and Postfix, with two workers sharing the state."""

from __future__ import annotations

import time

from click.testing import CliRunner

from appliance.cli import main
from appliance.storage.facade import Storage
from tests.support.services import wait_until
from tests.support.smtpclient import SMTPClient, send_message

# 127.0.0.1 must not be trusted (relay_networks) or it would never be greylisted.
GREYLIST = {
    "relay_networks": ["10.0.0.0/8"],
    "filters": {"greylist": {"mode": "block", "delay": 1.0, "retry_window": 120}},
}
SENDER = "alice@partner.example"


def message(subject: str = "hello") -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@partner.example>\r\n\r\nHi Bob.\r\n"
    ).encode()


def send(proxy, subject="hello", *, sender=SENDER, rcpts=("bob@example.com",), source=None):
    host, port = proxy.inbound
    return send_message(host, port, message(subject), mail_from=sender, rcpt_tos=list(rcpts),
                        source=source)


def worker_of(message_id_header: str) -> str:
    """The process part of a transaction id (see appliance.context.new_id)."""
    return message_id_header[11:15]


def test_first_attempt_is_delayed_and_a_retry_after_the_delay_passes_on_every_worker(
    proxy_factory, recorded
):
    proxy = proxy_factory(GREYLIST, workers=2)
    first = send(proxy, "first")
    reply = first.rcpts["bob@example.com"]
    assert reply.code == 451 and reply.enhanced == "4.7.1", reply
    assert "Greylisted" in reply.text and "retry in" in reply.text
    assert first.data is None
    too_early = send(proxy, "too early")
    assert too_early.rcpts["bob@example.com"].code == 451
    recorded.assert_no_messages(within=0.3)

    time.sleep(1.2)
    workers: set[str] = set()
    for attempt in range(20):  # fresh connections land on either worker
        result = send(proxy, f"retry {attempt}")
        assert result.accepted, result.final
        [delivered] = recorded.wait_for(1)
        workers.add(worker_of(delivered.header("X-Postwall-Id") or ""))
        recorded.clear()
        if len(workers) == 2:
            break
    assert len(workers) == 2, "the retries never reached both workers"

    with Storage.open(proxy.data_dir) as storage:
        def passed() -> bool:  # written in the background
            entry = storage.greylist.lookup("127.0.0.0/24", SENDER, "bob@example.com")
            return entry is not None and entry.passed and entry.attempts >= 3

        assert wait_until(passed, 5.0)

        def logged() -> set[str]:  # the message log is written in the background too
            rows = storage.messagelog.search(sender=SENDER, limit=100)
            return {name for row in rows for name, _, _ in row.symbols}

        assert wait_until(lambda: {"GREYLISTED", "GREYLIST_PASSED"} <= logged(), 20.0)
        delayed = storage.messagelog.search(sender=SENDER, action="tempfail")
    assert len(delayed) == 2 and "451 4.7.1 Greylisted" in delayed[0].reply


def test_another_recipient_is_a_new_triplet_and_the_cli_lists_and_clears_it(
    proxy_factory, recorded
):
    proxy = proxy_factory(GREYLIST)
    result = send(proxy, rcpts=("carol@example.com", "dave@example.com"))
    assert [r.code for r in result.rcpts.values()] == [451, 451]
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(lambda: len(storage.greylist.delayed()) == 2, 5.0)
        delayed = {(e.client_net, e.sender, e.recipient) for e in storage.greylist.delayed()}
    assert delayed == {("127.0.0.0/24", SENDER, "carol@example.com"),
                       ("127.0.0.0/24", SENDER, "dave@example.com")}

    config = ["--config", str(proxy.config_path)]
    shown = CliRunner().invoke(main, ["greylist", "show", *config])
    assert shown.exit_code == 0, shown.output
    assert "delayed: 2" in shown.output and "carol@example.com" in shown.output
    cleared = CliRunner().invoke(main, ["greylist", "clear", "127.0.0.1", *config])
    assert cleared.exit_code == 0 and "removed 2 triplet(s) of 127.0.0.0/24" in cleared.output

    # Past the delay, and past a maintenance tick (2 s) in which the worker notices the
    # clear: the retry is a first attempt again.
    time.sleep(3.0)
    retry = send(proxy, rcpts=("carol@example.com",))
    assert retry.rcpts["carol@example.com"].code == 451
    recorded.assert_no_messages(within=0.3)


def test_autowhitelisted_sender_and_the_relay_listener_are_never_greylisted(
    proxy_factory, recorded
):
    # 127.0.0.2 is the internal mail server (relay listener); 127.0.0.1 is the internet.
    proxy = proxy_factory(GREYLIST, relay_networks=["127.0.0.2/32"])
    host, port = proxy.relay
    outgoing = send_message(
        host, port, message("outgoing"), mail_from="bob@example.com",
        rcpt_tos=["carol@partner.example"], source="127.0.0.2",
    )
    assert outgoing.accepted, outgoing.final  # the relay listener is never greylisted
    recorded.wait_for(1)
    recorded.clear()

    # Carol is autowhitelisted now; the workers pick the list up within a few seconds.
    def carol_passes() -> bool:
        return send(proxy, "reply", sender="carol@partner.example").accepted

    assert wait_until(carol_passes, 8.0, interval=0.5)
    stranger = send(proxy, "stranger", sender="stranger@elsewhere.example")
    assert stranger.rcpts["bob@example.com"].code == 451


def test_configured_sender_domain_and_null_sender_policy(proxy_factory, recorded):
    proxy = proxy_factory(GREYLIST, filters={"greylist": {
        "mode": "block", "delay": 1.0, "retry_window": 120,
        "pass_sender_domains": ["*.bigmail.example"], "null_sender": "pass",
    }})
    assert send(proxy, "big", sender="someone@out.bigmail.example").accepted
    assert send(proxy, "bounce", sender="").accepted
    assert send(proxy, "other", sender="someone@bigmail.example.org").rcpts[
        "bob@example.com"].code == 451


def test_greylisting_is_off_by_default(proxy, recorded):
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER).code == 250
        assert smtp.rcpt("bob@example.com").code == 250
