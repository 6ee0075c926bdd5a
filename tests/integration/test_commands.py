"""The mail command interface end to end: a local user -> postwall's relay listener ->
the command is carried out -> its answer goes through the real Postfix to the recorder
(the internal mail server). Refusals, bad input and the block-report links too."""

from __future__ import annotations

import sqlite3
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.services import wait_until
from tests.support.smtpclient import SMTPClient, send_message

DOMAIN = "postwall.local"
USER = "bob@example.com"
ADMIN = "admin@example.com"
PRIVILEGED = {"commands": {"privileged": [ADMIN]}}


def original(subject: str = "cheap watches", body: str = "Buy cheap replica watches now\n",
             sender: str = "spammer@bad.example") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = USER
    msg["Subject"] = subject
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@bad.example>"
    msg.set_content(body)
    return msg


def report(command: str, *, body: str = "", attach: EmailMessage | None = None,
           sender: str = USER) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"{command}@{DOMAIN}"
    msg["Subject"] = f"{command} request"
    msg["Message-ID"] = f"<{command}.{time.monotonic_ns()}@example.com>"
    msg.set_content(body or "see attached\n")
    if attach is not None:
        msg.add_attachment(attach)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def command(proxy, name: str, content: bytes, *, sender: str = USER, relay: bool = True):
    host, port = proxy.relay if relay else proxy.inbound
    return send_message(host, port, content, mail_from=sender, rcpt_tos=[f"{name}@{DOMAIN}"])


def answer_to(recorded, sender: str, command_name: str):
    [answer] = recorded.wait_for_match(header="From", value=f"{command_name}@{DOMAIN}")
    assert list(answer.rcpt_tos) == [sender]
    assert answer.mail_from in ("", "<>")  # the null sender: nothing answers an answer
    assert answer.header("Auto-Submitted") == "auto-replied"
    return answer


def answer_text(message) -> str:
    parsed = message_from_bytes(message.content, policy=policy.default)
    return parsed.get_body(("plain",)).get_content()


def db_rows(proxy, query: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(proxy.data_dir / "postwall.db") as db:
        return db.execute(query, params).fetchall()


def assert_nothing_relayed_to_commands(recorded) -> None:
    for message in recorded.messages():
        assert not any(r.endswith(f"@{DOMAIN}") for r in message.rcpt_tos), message


# -- every user's commands ----------------------------------------------------------------


def test_help_is_answered_by_mail_and_never_relayed(proxy, recorded):
    result = command(proxy, "help", report("help"))
    assert result.data.code == 250, result.final
    text = answer_text(answer_to(recorded, USER, "help"))
    assert f"spam@{DOMAIN}" in text and f"persblack@{DOMAIN}" in text
    assert f"blacklist@{DOMAIN}" not in text  # bob is not privileged
    assert_nothing_relayed_to_commands(recorded)


def test_spam_report_learns_the_attachment_and_notspam_corrects_it(proxy, recorded):
    spam = original()
    result = command(proxy, "spam", report("spam", attach=spam))
    assert result.data.code == 250, result.final
    text = answer_text(answer_to(recorded, USER, "spam"))
    assert "learned as spam" in text and "cheap watches" in text
    rows = db_rows(proxy, "SELECT label, source, weight, who FROM training_ledger")
    assert rows == [("spam", "report", 2, USER)]
    assert db_rows(proxy, "SELECT value FROM counters WHERE name='bayes_spam'") == [(2,)]

    recorded.clear()
    assert command(proxy, "notspam", report("notspam", attach=spam)).data.code == 250
    assert "corrected to ham (was spam)" in answer_text(answer_to(recorded, USER, "notspam"))
    assert db_rows(proxy, "SELECT label, weight FROM training_ledger") == [("ham", 4)]
    counts = dict(db_rows(proxy, "SELECT name, value FROM counters WHERE name LIKE 'bayes_%'"))
    assert counts["bayes_spam"] == 0 and counts["bayes_ham"] == 4
    token = db_rows(proxy, "SELECT spam, ham FROM bayes_tokens WHERE token='s:watches'")
    assert token == [(0, 4)]

    recorded.clear()  # the same report again: learned once, nothing changes
    assert command(proxy, "notspam", report("notspam", attach=spam)).data.code == 250
    assert "already learned as ham" in answer_text(answer_to(recorded, USER, "notspam"))
    assert db_rows(proxy, "SELECT value FROM counters WHERE name='bayes_ham'") == [(4,)]


def test_inline_forward_is_learned(proxy, recorded):
    body = ("FYI\n\n---------- Forwarded message ---------\nFrom: spammer@bad.example\n"
            "Subject: You won a prize\n\nClaim your prize money today, click here\n")
    assert command(proxy, "spam", report("spam", body=body)).data.code == 250
    assert "You won a prize" in answer_text(answer_to(recorded, USER, "spam"))
    assert db_rows(proxy, "SELECT label FROM training_ledger") == [("spam",)]


def test_whitelist_and_notwhitelist_change_the_global_list(proxy, recorded):
    body = "friend@partner.example\n@trusted.example\n*.corp.example\n\n-- \nBob\n"
    assert command(proxy, "whitelist", report("whitelist", body=body)).data.code == 250
    text = answer_text(answer_to(recorded, USER, "whitelist"))
    assert "added friend@partner.example" in text
    rows = db_rows(proxy, "SELECT value, source, added_by FROM list_entries "
                          "WHERE list_name='whitelist' ORDER BY value")
    assert rows == [("*.corp.example", "mail", USER), ("@trusted.example", "mail", USER),
                    ("friend@partner.example", "mail", USER)]
    recorded.clear()
    content = report("notwhitelist", body="friend@partner.example\n")
    assert command(proxy, "notwhitelist", content).data.code == 250
    assert "removed friend@partner.example" in answer_text(
        answer_to(recorded, USER, "notwhitelist"))
    assert len(db_rows(proxy, "SELECT value FROM list_entries WHERE list_name='whitelist'")) == 2


def test_personal_blacklist_refuses_the_sender_for_that_recipient_only(proxy, recorded, postfix):
    content = report("persblack", body="spammer@bad.example\n")
    assert command(proxy, "persblack", content).data.code == 250
    text = answer_text(answer_to(recorded, USER, "persblack"))
    assert "added spammer@bad.example" in text
    recorded.clear()

    def refused_for_bob() -> bool:
        result = send_message(*proxy.inbound, original().as_bytes(),
                              mail_from="spammer@bad.example", rcpt_tos=["probe@example.com", USER])
        return result.rcpts[USER].code == 550

    # The proxy picks up the change at its next maintenance tick (2 s).
    assert wait_until(refused_for_bob, 10, interval=0.5)
    postfix.wait_queue_empty()
    recorded.clear()
    result = send_message(*proxy.inbound, original("for carol").as_bytes(),
                          mail_from="spammer@bad.example", rcpt_tos=["carol@example.com", USER])
    assert result.rcpts[USER].code == 550 and result.rcpts[USER].enhanced == "5.7.1"
    assert result.rcpts["carol@example.com"].code == 250
    assert result.data.code == 250
    [delivered] = recorded.wait_for_match(header="Subject", value="for carol")
    assert list(delivered.rcpt_tos) == ["carol@example.com"]
    assert delivered.header("X-Spam-Status").startswith("No, score=0")
    assert all(USER not in m.rcpt_tos for m in recorded.messages())

    recorded.clear()  # an empty persblack lists the user's entries
    assert command(proxy, "persblack", report("persblack", body="\n")).data.code == 250
    assert "spammer@bad.example" in answer_text(answer_to(recorded, USER, "persblack"))


def test_analyze_explains_the_score_and_the_deciding_tokens(proxy, recorded):
    assert command(proxy, "analyze", report("analyze", attach=original())).data.code == 250
    text = answer_text(answer_to(recorded, USER, "analyze"))
    assert "envelope: from=<spammer@bad.example>" in text
    assert "BAYES_UNSURE" in text and "bayes: p=" in text


def test_outgoing_mail_is_learned_as_ham(proxy, recorded):
    content = original("lunch on friday", "Shall we meet at noon?\n", sender=USER).as_bytes()
    result = send_message(*proxy.relay, content, mail_from=USER,
                          rcpt_tos=["carol@customer.example"])
    assert result.accepted, result.final
    assert wait_until(lambda: db_rows(proxy, "SELECT label, source FROM training_ledger"), 10)
    assert db_rows(proxy, "SELECT label, source, who FROM training_ledger") == [
        ("ham", "outgoing", USER)]


# -- refusals: nothing changes ---------------------------------------------------------


def test_command_from_outside_on_the_inbound_listener_is_refused(proxy, recorded):
    content = report("whitelist", body="evil@bad.example\n", sender="evil@bad.example")
    result = command(proxy, "whitelist", content, sender="evil@bad.example", relay=False)
    reply = result.rcpts[f"whitelist@{DOMAIN}"]
    assert reply.code == 550 and reply.enhanced == "5.7.1" and "relay port" in reply.text
    # Even with a local sender address: the inbound listener is the internet.
    result = command(proxy, "spam", report("spam", attach=original()), relay=False)
    assert result.rcpts[f"spam@{DOMAIN}"].code == 550
    recorded.assert_no_messages(within=1.0)
    assert db_rows(proxy, "SELECT * FROM list_entries") == []
    assert db_rows(proxy, "SELECT * FROM training_ledger") == []


def test_non_local_sender_on_the_relay_listener_is_refused(proxy, recorded):
    content = report("help", sender="someone@elsewhere.example")
    result = command(proxy, "help", content, sender="someone@elsewhere.example")
    reply = result.rcpts[f"help@{DOMAIN}"]
    assert reply.code == 550 and "local users" in reply.text
    recorded.assert_no_messages(within=1.0)


@pytest.mark.proxy_config(PRIVILEGED)
@pytest.mark.parametrize("name", ["blacklist", "redlist", "noprocessing", "spamlover",
                                  "blockreport"])
def test_privileged_command_from_an_ordinary_user_is_refused(proxy, recorded, name):
    result = command(proxy, name, report(name, body="x@bad.example\n"))
    reply = result.rcpts[f"{name}@{DOMAIN}"]
    assert reply.code == 550 and "privileged" in reply.text
    recorded.assert_no_messages(within=1.0)
    assert db_rows(proxy, "SELECT * FROM list_entries") == []


@pytest.mark.proxy_config(PRIVILEGED)
def test_privileged_user_changes_the_blacklist(proxy, recorded):
    content = report("blacklist", body="x@bad.example\n@worse.example\n", sender=ADMIN)
    assert command(proxy, "blacklist", content, sender=ADMIN).data.code == 250
    assert "added x@bad.example" in answer_text(answer_to(recorded, ADMIN, "blacklist"))
    rows = db_rows(proxy, "SELECT value FROM list_entries WHERE list_name='blacklist' "
                          "ORDER BY value")
    assert rows == [("@worse.example",), ("x@bad.example",)]


def test_unknown_command_and_mixed_recipients_are_refused(proxy, recorded):
    with SMTPClient(*proxy.relay) as smtp:
        smtp.ehlo()
        assert smtp.mail(USER).code == 250
        reply = smtp.rcpt(f"nosuch@{DOMAIN}")
        assert reply.code == 550 and reply.enhanced == "5.1.1"
        assert smtp.rcpt(f"help@{DOMAIN}").code == 250
        reply = smtp.rcpt("carol@customer.example")
        assert reply.code == 452 and reply.enhanced == "4.5.3"
        assert smtp.data(report("help")).code == 250
    [answer] = recorded.wait_for(1)
    assert list(answer.rcpt_tos) == [USER]
    assert not recorded.find(header="To", value="carol@customer.example")


# -- bad input: a clear answer and nothing changed -----------------------------------------


def test_report_without_a_message_is_answered_and_learns_nothing(proxy, recorded):
    result = command(proxy, "spam", report("spam", body="this is spam!\n"))
    assert result.data.code == 250
    answer = answer_to(recorded, USER, "spam")
    assert "no message found" in answer.header("Subject")
    assert "nothing was learned" in answer_text(answer)
    assert db_rows(proxy, "SELECT * FROM training_ledger") == []
    assert db_rows(proxy, "SELECT count(*) FROM bayes_tokens") == [(0,)]


def test_malformed_address_line_changes_nothing(proxy, recorded):
    body = "good@partner.example\nthis is not an address\nbad@@example\n"
    assert command(proxy, "whitelist", report("whitelist", body=body)).data.code == 250
    answer = answer_to(recorded, USER, "whitelist")
    text = answer_text(answer)
    assert "nothing changed" in answer.header("Subject")
    assert "line 2: 'this is not an address'" in text and "bad@@example" in text
    assert db_rows(proxy, "SELECT * FROM list_entries") == []


def test_20_mb_report_is_refused_and_learns_nothing(proxy, recorded):
    attachment = original(body="x" * 76 + "\n")
    filler = ("y" * 76 + "\r\n").encode() * (20_000_000 // 78)
    content = report("spam", attach=attachment) + filler
    assert len(content) > 20_000_000
    result = command(proxy, "spam", content)
    assert result.data.code == 552 and result.data.enhanced == "5.3.4"
    assert "nothing was done" in result.data.text
    recorded.assert_no_messages(within=1.0)
    assert db_rows(proxy, "SELECT * FROM training_ledger") == []


# -- block reports and their links -----------------------------------------------------


QUARANTINE = {
    **PRIVILEGED,
    "filters": {"regex": {"bomb_re": [{"pattern": "replica watches", "weight": 3}]}},
    "scoring": {"thresholds": {"tag": 5, "quarantine": 8, "reject": 20},
                "quarantine_delivers": "no"},
    "block_reports": {"base_url": "https://postwall.example.com:8443", "link_days": 2},
}


def links_of(text: str) -> dict[tuple[str, str], str]:
    """(subject, "release" | "release and whitelist the sender") -> token, from a digest."""
    found: dict[tuple[str, str], str] = {}
    subject = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Subject: "):
            subject = line.removeprefix("Subject: ")
        elif ": https://" in line:
            label, url = line.split(": ", 1)
            found[(subject, label)] = url.split("token=", 1)[1]
    return found


def test_blockreport_digests_and_their_links(proxy_factory, recorded):
    proxy = proxy_factory(QUARANTINE)
    for subject in ("cheap watches", "more watches"):
        content = original(subject).as_bytes().replace(b"\n", b"\r\n")
        result = send_message(*proxy.inbound, content, mail_from="spammer@bad.example",
                              rcpt_tos=[USER])
        assert result.data.code == 250
    txids = wait_until_rows(proxy, "SELECT id FROM message_log WHERE action='quarantine'",
                            count=2)
    recorded.assert_no_messages(within=0.5)  # kept only, nothing delivered

    # On request: a privileged user asks for bob's report.
    content = report("blockreport", body=f"{USER}\n", sender=ADMIN)
    assert command(proxy, "blockreport", content, sender=ADMIN).data.code == 250
    [digest] = recorded.wait_for_match(header="Subject", value="blocked message(s) for")
    assert list(digest.rcpt_tos) == [USER]
    assert "2 blocked message(s) listed" in answer_text(answer_to(recorded, ADMIN, "blockreport"))
    tokens = links_of(answer_text(digest))
    assert set(tokens) == {(s, label) for s in ("cheap watches", "more watches")
                           for label in ("release", "release and whitelist the sender")}

    from appliance import blockreports, digest_release, links
    from appliance.config.loader import load
    from appliance.storage.facade import Storage

    config = load(Path(proxy.config_path)).config
    with Storage.open(proxy.data_dir) as storage:
        # The scheduled run finds every local user with blocked mail.
        recorded.clear()
        assert blockreports.send_digests(storage, config) == 1
        [scheduled] = recorded.wait_for_match(header="Subject", value="blocked message(s) for")
        assert "cheap watches" in answer_text(scheduled)

        # An expired link changes nothing, even though it is correctly signed.
        key = links.load_key(proxy.data_dir)
        expired = links.sign(key, "release", txids[0], USER, 60, time.time() - 120)
        with pytest.raises(links.LinkError, match="expired"):
            digest_release.use_link(storage, config, expired)
        assert db_rows(proxy, "SELECT * FROM used_links") == []

        # The web UI answers the links by calling the appliance.
        recorded.clear()
        first = digest_release.use_link(storage, config, tokens[("cheap watches", "release")])
        assert first.recipient == USER and first.whitelisted is None
        [released] = recorded.wait_for_match(header="X-Postwall-Released")
        assert list(released.rcpt_tos) == [USER] and released.mail_from == "spammer@bad.example"
        assert released.header("Subject") == "cheap watches"
        assert db_rows(proxy, "SELECT label, source, weight FROM training_ledger") == [
            ("ham", "quarantine", 4)]
        # Replayed, or the other link of the same message: used once, nothing changes.
        for label in ("release", "release and whitelist the sender"):
            with pytest.raises(links.LinkError, match="already used"):
                digest_release.use_link(storage, config, tokens[("cheap watches", label)])
        assert db_rows(proxy, "SELECT count(*) FROM training_ledger") == [(1,)]
        assert db_rows(proxy, "SELECT * FROM list_entries WHERE list_name='whitelist'") == []

        second = digest_release.use_link(
            storage, config, tokens[("more watches", "release and whitelist the sender")])
        assert second.whitelisted == "spammer@bad.example"
        assert recorded.wait_for_match(header="Subject", value="more watches")
        rows = db_rows(proxy, "SELECT value, added_by FROM list_entries "
                              "WHERE list_name='whitelist'")
        assert rows == [("spammer@bad.example", USER)]
        assert len(recorded.find(header="X-Postwall-Released")) == 2


@pytest.mark.proxy_config({"commands": {"helpdesk": "helpdesk@example.com"}})
def test_answers_are_copied_to_the_helpdesk(proxy, recorded):
    assert command(proxy, "help", report("help")).data.code == 250
    [answer] = recorded.wait_for_match(header="From", value=f"help@{DOMAIN}")
    assert sorted(answer.rcpt_tos) == ["bob@example.com", "helpdesk@example.com"]


def wait_until_rows(proxy, query: str, count: int = 1) -> list:
    found: list = []

    def present() -> bool:
        found[:] = [row[0] for row in db_rows(proxy, query)]
        return len(found) >= count

    assert wait_until(present, 10)
    return found
