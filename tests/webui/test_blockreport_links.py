"""The block-report digest links through the Flask test client, without Postfix (its
port is closed here): the confirmation page, refusals of forged, expired, replayed and
CSRF-less requests, the rate limit, and a failed delivery that leaves the link usable.
The successful release through the real Postfix is in
tests/integration/test_webui_links.py."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import links
from appliance.storage.messagelog import MessageLogEntry
from tests.support.webui import UIClient
from tests.webui.conftest import Appliance, write_config

USER = "bob@example.com"
RATE_LIMIT = 4
KEPT = (b"From: Mallory <mallory@evil.example>\r\nTo: bob@example.com\r\n"
        b"Subject: <b>Invoice</b> overdue\r\n\r\nSecret body text: pay to IBAN XX00.\r\n")


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Appliance]:
    """An appliance with one quarantined message for bob and carol (and a low limit of
    bad links per client address)."""
    from webui import create_app

    config_path, data_dir = tmp_path / "postwall.yml", tmp_path / "data"
    write_config(config_path, data_dir, {"webui": {"login_failures_per_ip": RATE_LIMIT}})
    appliance = Appliance(config_path, data_dir, create_app(config_path))
    storage = appliance.storage
    storage.mail.keep("spam", "q1", KEPT)
    storage.messagelog.record(MessageLogEntry(
        id="q1", time=datetime.now(UTC), listener="inbound", client_ip="198.51.100.7",
        helo="mx.evil.example", sender="mallory@evil.example",
        recipients=[USER, "carol@example.com"], subject="<b>Invoice</b> overdue", size=len(KEPT),
        symbols=[("BOMB_RE", 9.0, "bombRe 'IBAN' matched")], total=9.0, action="quarantine",
        reply="250 2.0.0 Ok", downstream_reply=None))
    yield appliance
    storage.close()


def token(appliance: Appliance, action: str = "release", *, txid: str = "q1",
          recipient: str = USER, lifetime: float = 3600, now: float | None = None) -> str:
    return links.sign(links.load_key(appliance.data_dir), action, txid, recipient, lifetime, now)


def nothing_changed(appliance: Appliance) -> None:
    storage = appliance.storage
    assert storage.links.recipients_of("q1") == set()
    assert storage.training.count() == 0
    assert storage.lists.count("whitelist") == 0
    assert storage.releases.get("q1") is None
    assert storage.mail.exists("spam", "q1")


def text(response: object) -> str:
    return html.unescape(response.get_data(as_text=True))  # type: ignore[attr-defined]


def test_get_shows_what_the_link_does_and_changes_nothing(held: Appliance) -> None:
    client = UIClient(held.app)
    response = client.get(f"/blockreport/link?token={token(held)}")
    assert response.status_code == 200
    page = text(response)
    assert "Release this message?" in page
    assert f"delivers it to {USER} only" in page and "whitelist" not in page
    assert "<b>Invoice</b> overdue" in page and "mallory@evil.example" in page
    assert "<b>Invoice</b>" not in response.get_data(as_text=True)  # escaped
    # Nothing but the subject and sender: no body, score, symbols or other recipients.
    for hidden in ("Secret body", "IBAN", "BOMB_RE", "carol@example.com", "9.0"):
        assert hidden not in page, hidden
    assert 'name="csrf_token"' in page and 'id="confirm"' in page
    assert response.headers["Cache-Control"] == "no-store"
    page = text(client.get(f"/blockreport/link?token={token(held, 'release_whitelist')}"))
    assert "Release and whitelist the sender?" in page
    assert "puts its sender on the whitelist" in page
    nothing_changed(held)
    assert held.storage.audit.count() == 0


def test_forged_links_are_refused_and_counted_like_failed_logins(held: Appliance) -> None:
    client = UIClient(held.app)
    good = token(held)
    payload, _, signature = good.partition(".")
    other = links.sign(b"k" * 32, "release", "q1", USER, 3600)  # another appliance's key
    forged = [other, f"{payload}.{signature[:-2]}AA", "garbage"]
    for bad in forged:
        response = client.get(f"/blockreport/link?token={bad}")
        assert response.status_code == 400, bad
        assert "This link cannot be used: this link is not valid" in text(response)
        assert 'id="confirm"' not in text(response)
    assert client.get("/blockreport/link").status_code == 400  # no token at all
    # RATE_LIMIT failures from this address: even a good link is refused now, by GET
    # and by POST, and a login from here too (the budget is shared).
    response = client.get(f"/blockreport/link?token={good}")
    assert response.status_code == 429
    assert "Too many invalid links from your address" in text(response)
    assert client.post("/blockreport/link", {"token": good}).status_code == 429
    assert client.post("/login", {"username": "x", "password": "y"}).status_code == 429
    nothing_changed(held)
    assert held.storage.audit.count() == 0
    # Another address is not affected.
    elsewhere = UIClient(held.app)
    elsewhere.client.environ_base["REMOTE_ADDR"] = "192.0.2.99"
    assert elsewhere.get(f"/blockreport/link?token={good}").status_code == 200


def test_forged_post_is_refused_and_audited(held: Appliance) -> None:
    client = UIClient(held.app)
    client.get(f"/blockreport/link?token={token(held)}")  # a page with a CSRF token
    other = links.sign(b"k" * 32, "release_whitelist", "q1", USER, 3600)
    response = client.post("/blockreport/link", {"token": other})
    assert response.status_code == 400
    assert "this link is not valid (its signature does not match)" in text(response)
    nothing_changed(held)
    [entry] = held.storage.audit.search(action="blockreport.")
    assert (entry.username, entry.action, entry.client_ip) == ("-", "blockreport.refused",
                                                               "192.0.2.10")
    assert entry.target == "a link not signed by this appliance"


def test_expired_link_is_refused_without_counting_as_a_guess(held: Appliance) -> None:
    client = UIClient(held.app)
    expired = token(held, lifetime=60, now=time.time() - 120)
    for _ in range(RATE_LIMIT + 1):
        response = client.get(f"/blockreport/link?token={expired}")
        assert response.status_code == 410
        assert "this link has expired; use a newer block report" in text(response)
    client.get(f"/blockreport/link?token={token(held)}")  # not rate-limited: 200, a CSRF token
    response = client.post("/blockreport/link", {"token": expired})
    assert response.status_code == 410
    nothing_changed(held)
    [entry] = held.storage.audit.search(action="blockreport.")
    assert entry.username == f"link:{USER}" and entry.target == f"spam/q1 for {USER}"
    assert "expired" in (entry.new_value or "")


def test_used_link_is_refused(held: Appliance) -> None:
    """One use per message and recipient: either link of a used message is spent."""
    claims = links.verify(links.load_key(held.data_dir), token(held))
    assert held.storage.links.claim(claims.link_id, action="release", txid="q1", recipient=USER,
                                    expires_at=datetime.now(UTC) + timedelta(hours=1))
    client = UIClient(held.app)
    for action in ("release", "release_whitelist"):
        response = client.get(f"/blockreport/link?token={token(held, action)}")
        assert response.status_code == 410
        assert "this link was already used" in text(response)
    client.get(f"/blockreport/link?token={token(held, recipient='carol@example.com')}")
    response = client.post("/blockreport/link", {"token": token(held, "release_whitelist")})
    assert response.status_code == 410 and "already used" in text(response)
    assert held.storage.lists.count("whitelist") == 0 and held.storage.training.count() == 0


def test_post_without_csrf_token_is_refused(held: Appliance) -> None:
    client = UIClient(held.app)
    client.get(f"/blockreport/link?token={token(held)}")
    response = client.post("/blockreport/link", {"token": token(held)}, csrf=False)
    assert response.status_code == 400 and "Form expired" in text(response)
    response = client.post("/blockreport/link", {"token": token(held), "csrf_token": "forged"})
    assert response.status_code == 400 and "Form expired" in text(response)
    response = client.post("/blockreport/link", {})  # a CSRF token, but no link
    assert response.status_code == 400 and "did not carry a link" in text(response)
    nothing_changed(held)
    assert held.storage.audit.count() == 0


def test_failed_delivery_leaves_the_link_usable(held: Appliance) -> None:
    """Postfix is down (port 9): 503, Postfix's answer only in the audit log, and the
    same link works again later."""
    client = UIClient(held.app)
    good = token(held, "release_whitelist")
    client.get(f"/blockreport/link?token={good}")
    response = client.post("/blockreport/link", {"token": good})
    assert response.status_code == 503
    page = text(response)
    assert "could not be delivered just now" in page and "127.0.0.1" not in page
    nothing_changed(held)
    [entry] = held.storage.audit.search(action="blockreport.")
    assert entry.action == "blockreport.refused" and "downstream unavailable" in entry.new_value
    assert client.get(f"/blockreport/link?token={good}").status_code == 200


def test_a_message_gone_from_the_quarantine_is_410(held: Appliance) -> None:
    client = UIClient(held.app)
    held.storage.releases.claim("q1", "spam", "admin")  # released in the UI meanwhile
    response = client.get(f"/blockreport/link?token={token(held)}")
    assert response.status_code == 410
    page = text(response)
    assert "this message was already released from the quarantine" in page
    assert "admin" not in page.replace("administrator", "")
    response = client.get(f"/blockreport/link?token={token(held, txid='nosuchtx')}")
    assert response.status_code == 410 and "not in the quarantine" in text(response)
    held.storage.mail.delete("spam", "q1")
    held.storage.releases.abandon("q1")
    response = client.get(f"/blockreport/link?token={token(held)}")
    assert response.status_code == 410 and "no longer kept" in text(response)


def test_an_unreadable_link_key_is_the_installations_fault(held: Appliance) -> None:
    good = token(held)
    (held.data_dir / links.KEY_FILE).chmod(0o644)
    client = UIClient(held.app)
    response = client.get(f"/blockreport/link?token={good}")
    assert response.status_code == 503
    page = text(response)
    assert "cannot be used at the moment" in page and links.KEY_FILE not in page
