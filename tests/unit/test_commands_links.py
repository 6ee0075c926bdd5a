"""Command parsing, personal blacklists, digest link signing and the link actions' refusals."""

from __future__ import annotations

import os
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from appliance import digest_release, links, mime
from appliance.commands.addresses import PRIVILEGED_COMMANDS, Command, command_for
from appliance.commands.parse import address_lines, forwarded_messages, inline_forward, own_text
from appliance.config.schema import Config
from appliance.personal import PersonalBlacklists
from appliance.storage.facade import Storage

# -- addresses -----------------------------------------------------------------------------


def test_command_addresses() -> None:
    assert command_for("Spam@PostWall.local", "postwall.local") is Command.SPAM
    assert command_for("<notpersblack@postwall.local>", "postwall.local") is Command.NOTPERSBLACK
    assert command_for("nosuch@postwall.local", "postwall.local") is False
    assert command_for("spam@example.com", "postwall.local") is None
    assert Command.BLACKLIST in PRIVILEGED_COMMANDS and Command.SPAM not in PRIVILEGED_COMMANDS
    assert Command.BLOCKREPORT in PRIVILEGED_COMMANDS


# -- parsing -------------------------------------------------------------------------------


def command_mail(body: str, attach: EmailMessage | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "bob@example.com"
    msg["Subject"] = "fw"
    msg.set_content(body)
    if attach is not None:
        msg.add_attachment(attach)
    return msg


def forwarded() -> EmailMessage:
    inner = EmailMessage()
    inner["From"] = "Spammer <spammer@bad.example>"
    inner["Subject"] = "win"
    inner.set_content("you won, user@inner.example")
    return inner


def parsed(msg: EmailMessage):  # type: ignore[no-untyped-def]
    return mime.parse(msg.as_bytes())


def test_forwarded_attachment_and_own_text_are_kept_apart() -> None:
    msg = parsed(command_mail("first@example.org\n", forwarded()))
    [content] = forwarded_messages(msg)
    assert b"Subject: win" in content and b"you won" in content
    assert own_text(msg).strip() == "first@example.org"  # not the attachment's text


def test_eml_file_attachment_counts_as_forwarded() -> None:
    msg = command_mail("see file")
    msg.add_attachment(forwarded().as_bytes(), maintype="application", subtype="octet-stream",
                       filename="spam.eml")
    [content] = forwarded_messages(parsed(msg))
    assert b"Subject: win" in content


def test_inline_forward_becomes_a_message() -> None:
    text = ("see below\n\n-----Original Message-----\nFrom: x@bad.example\nSubject: Offer\n\n"
            "cheap stuff here\n")
    content = inline_forward(text)
    assert content is not None
    assert content.startswith(b"From: x@bad.example\r\nSubject: Offer\r\n")
    assert content.rstrip().endswith(b"cheap stuff here")
    assert inline_forward("no marker here") is None
    assert forwarded_messages(parsed(command_mail("just text, no message"))) == []


def test_address_lines_report_every_malformed_line() -> None:
    text = ("a@example.org\n\n> quoted@example.org\n# comment\n@example.net  # the domain\n"
            "two words here\n*.corp.example\n-- \nsignature@example.org\n")
    lines = address_lines(text, 10)
    assert lines.values == ["a@example.org", "@example.net", "*.corp.example"]
    assert lines.malformed == [(6, "two words here", "one address per line, no spaces")]
    many = address_lines("\n".join(f"u{i}@example.org" for i in range(5)), 3)
    assert len(many.values) == 3 and "more than 3" in many.malformed[0][2]


# -- personal blacklists ---------------------------------------------------------------------


def test_personal_blacklist_store_and_index(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as storage:
        store = storage.personal
        before = store.change_counter()
        assert store.add("Bob@Example.com", ["X@Bad.example", "@worse.example"]) == [
            "x@bad.example", "@worse.example"]
        assert store.change_counter() > before
        with pytest.raises(ValueError, match="regular expressions"):
            store.add("bob@example.com", ["/.*/"])
        with pytest.raises(ValueError):
            store.add("not an address", ["x@bad.example"])
        with pytest.raises(ValueError):
            store.add("bob@example.com", ["*"])  # would match everyone
        assert store.entries("bob@example.com") == ["@worse.example", "x@bad.example"]
        index = PersonalBlacklists(store.all_entries())
        assert index.match("BOB@example.com", "x@bad.example") == "x@bad.example"
        assert index.match("bob@example.com", "y@worse.example") == "@worse.example"
        assert index.match("carol@example.com", "x@bad.example") is None
        assert store.remove("bob@example.com", ["x@bad.example", "n@none.example"]) == [
            "x@bad.example"]


# -- links ---------------------------------------------------------------------------------


def test_link_key_is_created_owner_only_and_kept(tmp_path: Path) -> None:
    key = links.load_key(tmp_path)
    path = tmp_path / links.KEY_FILE
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert links.load_key(tmp_path) == key
    os.chmod(path, 0o644)
    with pytest.raises(links.LinkError, match="readable by others"):
        links.load_key(tmp_path)


def test_links_verify_sign_and_expiry() -> None:
    key = b"k" * 32
    now = time.time()
    token = links.sign(key, "release", "txid1", "Bob@Example.com", 3600, now)
    claims = links.verify(key, token, now + 10)
    assert (claims.action, claims.txid, claims.recipient) == ("release", "txid1",
                                                              "bob@example.com")
    other = links.sign(key, "release_whitelist", "txid1", "bob@example.com", 3600, now)
    assert links.verify(key, other, now).link_id == claims.link_id  # one use per message
    with pytest.raises(links.LinkError, match="expired"):
        links.verify(key, token, now + 3601)
    with pytest.raises(links.LinkError, match="signature"):
        links.verify(b"x" * 32, token, now)
    payload, signature = token.split(".")
    forged = links.sign(key, "release", "txid2", "bob@example.com", 3600, now).split(".")[0]
    with pytest.raises(links.LinkError, match="signature"):
        links.verify(key, f"{forged}.{signature}", now)
    for garbage in ("", "abc", "a.b.c" * 1000, "ä.ö", f"{payload}."):
        with pytest.raises(links.LinkError):
            links.verify(key, garbage, now)
    with pytest.raises(ValueError):
        links.sign(key, "delete", "t", "b@example.com", 10)


def test_expired_forged_and_unknown_links_change_nothing(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    with Storage.open(tmp_path) as storage:
        key = links.load_key(tmp_path)
        now = time.time()
        expired = links.sign(key, "release", "txid1", "bob@example.com", 60, now - 120)
        with pytest.raises(links.LinkError, match="expired"):
            digest_release.use_link(storage, config, expired)
        with pytest.raises(links.LinkError, match="not valid"):
            digest_release.use_link(storage, config, "garbage")
        # A valid link to a message that is not (or no longer) in the quarantine: refused,
        # and the link stays usable (its claim is given back).
        unknown = links.sign(key, "release_whitelist", "nosuchtx", "bob@example.com", 60, now)
        for _ in range(2):
            with pytest.raises(digest_release.ReleaseError, match="not in the quarantine"):
                digest_release.use_link(storage, config, unknown)
        assert storage.training.count() == 0
        assert storage.lists.count("whitelist") == 0
        assert storage.links.purge_expired() == 0
