"""Recipient verification end to end: client -> proxy -> real Postfix -> recorder, with
the callout asking a recording server that knows a fixed set of mailboxes and LDAP
asking a real slapd. Unknown users get 550 5.1.1 at RCPT, a verifier that is down
follows on_unavailable, the known recipients of the same transaction get their mail,
and a harvesting client is cut off and lands in the penalty box."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.storage.facade import Storage
from tests.support.services import RecordingServer, ServiceError, free_port, wait_until
from tests.support.smtpclient import SMTPClient, SMTPProtocolError

MAILBOXES = ("alice@corp.example", "bob@corp.example")
DOMAINS = ["example.com", "corp.example", "ldap.example", "static.example", "lenient.example"]
MESSAGE = (
    b"From: <sender@partner.example>\r\nTo: <alice@corp.example>\r\nSubject: hello\r\n"
    b"Message-ID: <rv-{n}@partner.example>\r\n\r\nHello.\r\n"
)
UNKNOWN_TEXT = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


@pytest.fixture(scope="module")
def mailboxes() -> Iterator[RecordingServer]:
    """The internal mail server as the callout sees it: it knows MAILBOXES only."""
    server = RecordingServer(mailboxes=MAILBOXES)
    server.start()
    yield server
    server.cleanup()


def callout(port: int, **extra: Any) -> dict[str, Any]:
    return {"method": "callout", "callout": {"host": "127.0.0.1", "port": port, "timeout": 2},
            **extra}


def config(domains: dict[str, Any], **verify: Any) -> dict[str, Any]:
    return {
        "local_domains": DOMAINS,
        "filters": {"recipient_verify": {
            "domains": domains, "valid_recipients": ["known@static.example"], **verify,
        }},
    }


def transaction(proxy, recipients: list[str], n: int = 0, source: str | None = None):
    """One transaction: the replies to each RCPT and to DATA (None if no RCPT passed)."""
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@partner.example").code == 250
        replies = {r: smtp.rcpt(r) for r in recipients}
        final = None
        if any(reply.code == 250 for reply in replies.values()):
            final = smtp.data(MESSAGE.replace(b"{n}", str(n).encode()))
        smtp.quit()
    return {r: str(reply) for r, reply in replies.items()}, final


def delivered_to(recorded, n: int) -> tuple[str, ...]:
    found = recorded.wait_for_match(f"rv-{n}@partner.example")
    assert len(found) == 1, found
    return tuple(sorted(found[0].rcpt_tos))


# -- callout -----------------------------------------------------------------------------


def test_unknown_users_get_550_at_rcpt_and_the_known_get_their_mail(
    proxy_factory, recorded, mailboxes
):
    proxy = proxy_factory(config({"corp.example": callout(mailboxes.port)}))
    replies, final = transaction(proxy, [
        "alice@corp.example", "mallory@corp.example", "Bob@corp.example",
        "postmaster@corp.example", "anyone@example.com",
    ], n=1)
    assert replies["mallory@corp.example"] == UNKNOWN_TEXT.format("mallory@corp.example")
    for ok in ("alice@corp.example", "Bob@corp.example", "postmaster@corp.example",
               "anyone@example.com"):  # postmaster always; example.com is not verified
        assert replies[ok].startswith("250"), (ok, replies[ok])
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 1) == ("Bob@corp.example", "alice@corp.example",
                                         "anyone@example.com", "postmaster@corp.example")
    probed = [address for _, address, _ in mailboxes.probes()]
    assert "mallory@corp.example" in probed and "postmaster@corp.example" not in probed
    # Cached: a second transaction asks the internal server nothing new.
    before = len(mailboxes.probes())
    replies, _ = transaction(proxy, ["alice@corp.example", "mallory@corp.example"], n=2)
    assert replies["mallory@corp.example"].startswith("550 5.1.1")
    assert len(mailboxes.probes()) == before
    assert "recipient mallory@corp.example unknown: corp.example: callout" in (
        proxy.stderr_text())


def test_a_callout_target_that_is_down_tempfails_or_accepts_per_domain(proxy_factory, recorded):
    dead = free_port()
    proxy = proxy_factory(config({
        "corp.example": callout(dead),
        "lenient.example": callout(dead, on_unavailable="accept"),
        "static.example": {"method": "static"},
    }))
    replies, final = transaction(
        proxy, ["alice@corp.example", "someone@lenient.example", "known@static.example"], n=3
    )
    assert replies["alice@corp.example"] == (
        "451 4.4.3 <alice@corp.example>: Recipient address verification unavailable, "
        "try again later"
    )
    assert replies["someone@lenient.example"].startswith("250")
    assert replies["known@static.example"].startswith("250")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 3) == ("known@static.example", "someone@lenient.example")
    log = proxy.stderr_text()
    assert ("recipient alice@corp.example cannot be verified, 451 4.4.3 (on_unavailable="
            "tempfail for corp.example): callout 127.0.0.1:") in log
    assert "cannot connect to 127.0.0.1" in log
    assert ("recipient someone@lenient.example NOT verified, accepted (on_unavailable=accept"
            " for lenient.example)") in log


def test_a_callout_target_answering_4xx_tempfails(proxy_factory, recorded):
    deferring = RecordingServer(tempfail_rcpt=True)
    deferring.start()
    try:
        proxy = proxy_factory(config({
            "corp.example": callout(deferring.port), "static.example": {"method": "static"},
        }))
        replies, final = transaction(proxy, ["alice@corp.example", "known@static.example"], n=4)
    finally:
        deferring.cleanup()
    assert replies["alice@corp.example"].startswith("451 4.4.3 <alice@corp.example>")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 4) == ("known@static.example",)
    assert "451 4.3.0 Mailbox lookup temporarily unavailable" in proxy.stderr_text()


# -- static ------------------------------------------------------------------------------------


def test_static_lists_from_config_file_and_database(proxy_factory, recorded, tmp_path):
    listed = tmp_path / "recipients.txt"
    listed.write_text("# maintained by a script\nfile-user@static.example\n*@dept.static.example\n")
    proxy = proxy_factory(config({"static.example": {"method": "static",
                                                      "list_file": str(listed)},
                                  "*.static.example": {"method": "static",
                                                       "list_file": str(listed)}},
                                 ), local_domains=[*DOMAINS, "*.static.example"])
    added = CliRunner().invoke(main, ["lists", "add", "valid_recipients", "db-user@static.example",
                                      "--config", str(proxy.config_path)])
    assert added.exit_code == 0, added.output
    # The database list reaches the worker at its next maintenance tick.
    assert wait_until(lambda: transaction(proxy, ["db-user@static.example"], n=5)[0][
        "db-user@static.example"].startswith("250"), 15.0, 0.5)
    replies, final = transaction(proxy, [
        "known@static.example", "file-user@static.example", "x@dept.static.example",
        "nobody@static.example",
    ], n=6)
    assert replies["nobody@static.example"] == UNKNOWN_TEXT.format("nobody@static.example")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 6) == ("file-user@static.example", "known@static.example",
                                         "x@dept.static.example")


def test_valid_recipients_file_entries_follow_the_file_without_a_restart(
    proxy_factory, recorded, tmp_path
):
    import os
    import time

    def write_list(text: str) -> None:
        # Atomic replacement, dated back past the settle time: the next tick reads it.
        tmp = tmp_path / "valid.txt.tmp"
        tmp.write_text(text)
        past = time.time() - 10
        os.utime(tmp, (past, past))
        os.replace(tmp, tmp_path / "valid.txt")

    write_list("# from the HR script\nold-hire@static.example\n")
    proxy = proxy_factory({"local_domains": DOMAINS, "filters": {"recipient_verify": {
        "domains": {"static.example": {"method": "static"}},
        "valid_recipients": [f"file:{tmp_path / 'valid.txt'}"],
    }}})
    replies, _ = transaction(proxy, ["old-hire@static.example", "new-hire@static.example"],
                             n=7)
    assert replies["old-hire@static.example"].startswith("250")
    assert replies["new-hire@static.example"] == UNKNOWN_TEXT.format("new-hire@static.example")
    pid = proxy._proc.pid

    write_list("new-hire@static.example\n")
    assert wait_until(lambda: transaction(proxy, ["new-hire@static.example"], n=8)[0][
        "new-hire@static.example"].startswith("250"), 15.0, 0.5)
    replies, final = transaction(proxy, ["old-hire@static.example", "new-hire@static.example"],
                                 n=9)
    assert replies["old-hire@static.example"] == UNKNOWN_TEXT.format("old-hire@static.example")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 9) == ("new-hire@static.example",)
    assert proxy._proc.pid == pid and proxy._proc.poll() is None  # no restart


# -- LDAP ---------------------------------------------------------------------------------------


def ldap_domain(ldap_server, tmp_path, **extra: Any) -> dict[str, Any]:
    password = extra.pop("password", None)
    return {"method": "ldap", "ldap": {
        "servers": [ldap_server.url], "base_dn": ldap_server.base_dn, "timeout": 2,
        "bind_dn": ldap_server.bind_dn,
        "bind_password_file": str(ldap_server.password_file(tmp_path, password=password)),
    }, **extra}


def test_ldap_users_and_their_aliases_pass_unknown_users_get_550(
    proxy_factory, recorded, ldap_server, tmp_path
):
    proxy = proxy_factory(config({"ldap.example": ldap_domain(ldap_server, tmp_path)}))
    replies, final = transaction(proxy, [
        "bob@ldap.example", "a.smith@ldap.example", "nobody@ldap.example",
        "*@ldap.example", "a*@ldap.example", "*)(uid=*@ldap.example",
    ], n=7)
    assert replies["nobody@ldap.example"] == UNKNOWN_TEXT.format("nobody@ldap.example")
    # Wildcards reach LDAP escaped and match literally; parentheses never get that far.
    assert replies["*@ldap.example"].startswith("550 5.1.1")
    assert replies["a*@ldap.example"].startswith("550 5.1.1")
    assert replies["*)(uid=*@ldap.example"].startswith("501 5.5.4")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 7) == ("a.smith@ldap.example", "bob@ldap.example")


def test_ldap_with_a_wrong_password_tempfails_and_says_why(
    proxy_factory, recorded, ldap_server, tmp_path
):
    proxy = proxy_factory(config({
        "ldap.example": ldap_domain(ldap_server, tmp_path, password="wrong"),
        "static.example": {"method": "static"},
    }))
    replies, final = transaction(proxy, ["bob@ldap.example", "known@static.example"], n=8)
    assert replies["bob@ldap.example"].startswith("451 4.4.3 <bob@ldap.example>")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 8) == ("known@static.example",)
    assert "invalidCredentials" in proxy.stderr_text()


def test_ldap_unreachable_with_accept_delivers(proxy_factory, recorded, tmp_path):
    proxy = proxy_factory(config({"ldap.example": {
        "method": "ldap", "on_unavailable": "accept",
        "ldap": {"servers": [f"ldap://127.0.0.1:{free_port()}"], "base_dn": "dc=x",
                 "timeout": 2},
    }}))
    replies, final = transaction(proxy, ["whoever@ldap.example"], n=9)
    assert replies["whoever@ldap.example"].startswith("250")
    assert final is not None and final.code == 250
    assert delivered_to(recorded, 9) == ("whoever@ldap.example",)
    assert "NOT verified, accepted (on_unavailable=accept for ldap.example)" in (
        proxy.stderr_text())


def test_a_password_file_others_can_read_stops_the_start(
    proxy_factory, ldap_server, tmp_path
):
    domain = ldap_domain(ldap_server, tmp_path)
    domain["ldap"]["bind_password_file"] = str(
        ldap_server.password_file(tmp_path, mode=0o644)
    )
    proxy = proxy_factory(config({"ldap.example": domain}), start=False)
    with pytest.raises(ServiceError):
        proxy.start(timeout=10)
    assert "readable by others (mode 0644): chmod 600 it" in proxy.stderr_text()


# -- directory harvesting ------------------------------------------------------------------


def test_a_harvesting_client_is_cut_off_and_penalised(proxy_factory, recorded):
    proxy = proxy_factory(config(
        {"static.example": {"method": "static"}},
        harvest={"max_unknown_per_connection": 3},
    ), relay_networks=["10.0.0.0/8"])  # 127.0.0.x clients are untrusted here
    source = "127.0.0.41"
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        smtp.ehlo()
        assert smtp.mail("harvester@spam.example").code == 250
        assert smtp.rcpt("known@static.example").code == 250
        codes = [smtp.rcpt(f"guess{n}@static.example").code for n in range(3)]
        assert codes == [550, 550, 550]
        cut = smtp.rcpt("guess3@static.example")
        assert str(cut) == "421 4.7.0 Too many unknown recipients, closing connection"
        smtp.sock.settimeout(5)
        with pytest.raises((SMTPProtocolError, OSError)):
            smtp.noop()  # the proxy hung up
    with Storage.open(proxy.data_dir) as storage:
        assert wait_until(lambda: storage.penalty.get(source) is not None, 5.0)
        entry = storage.penalty.get(source)
    # 3 rejected recipients (1 point each) + the harvest (20 points).
    assert entry is not None and 22.9 < entry.score < 23.1, entry
    with SMTPClient(*proxy.inbound, source=source) as smtp:
        assert smtp.greeting.code == 421  # the penalty box refuses it for now
    assert "directory harvest: 4 unknown recipients in this connection" in proxy.stderr_text()
    assert not recorded.messages()  # the cut transaction delivered nothing
    with socket.create_connection(proxy.inbound, source_address=("127.0.0.42", 0)) as other:
        assert other.recv(100).startswith(b"220")  # other clients are not affected
