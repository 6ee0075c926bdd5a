"""Block-report digest links answered by the web UI, end to end: a message quarantined by
the running proxy, the digest sent through the real Postfix to the recorder (the
internal mail server), its link opened without a login in the Flask test client — the
GET only asks, the POST releases once through Postfix, learns the message as ham and
is audited — and the web UI's own release, which leaves out whoever already released
their copy."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import urlsplit

import pytest

from appliance import blockreports, links
from appliance.config import loader
from tests.support.services import ProxyProcess, wait_until
from tests.support.smtpclient import send_message
from tests.support.webui import ADMIN_PASSWORD, UIClient, create_user

BOB, CAROL = "bob@example.com", "carol@example.com"
SENDER = "promo@lotto.example"
BASE_URL = "https://postwall.example.com:8443"
CONFIG = {
    "filters": {"regex": {"bomb_subject_re": [{"pattern": "lottery", "weight": 3}]}},
    "scoring": {"quarantine_delivers": "no"},  # BOMB_SUBJECT 3 x 3 = 9: quarantine
    "block_reports": {"base_url": BASE_URL, "link_days": 2},
}


def quarantine(proxy: ProxyProcess, storage: Any, subject: str, rcpts: list[str]) -> str:
    content = (f"From: <{SENDER}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{time.time_ns()}@lotto.example>\r\n\r\nYou won.\r\n").encode()
    assert send_message(*proxy.inbound, content, mail_from=SENDER, rcpt_tos=rcpts).accepted
    found: list[Any] = []
    assert wait_until(lambda: bool(found.extend(storage.messagelog.search(subject=subject))
                                   or found), 10)
    [entry] = found
    assert entry.action == "quarantine" and storage.mail.exists("spam", entry.id)
    return str(entry.id)


def digest_links(recorded: Any, user: str) -> dict[tuple[str, str], str]:
    """(subject, "release" | "release and whitelist the sender") -> the link's path."""
    [digest] = recorded.wait_for_match(header="Subject", value=f"blocked message(s) for {user}")
    body = message_from_bytes(digest.content, policy=policy.default).get_body(("plain",))
    found, subject = {}, ""
    for line in body.get_content().splitlines():
        line = line.strip()
        if line.startswith("Subject: "):
            subject = line.removeprefix("Subject: ")
        elif f": {BASE_URL}/blockreport/link?token=" in line:
            label, url = line.split(": ", 1)
            parts = urlsplit(url)
            found[(subject, label)] = f"{parts.path}?{parts.query}"
    return found


def page(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


@pytest.fixture
def appliance(proxy_factory: Any) -> Iterator[tuple[ProxyProcess, Any, Any, Any]]:
    """The running proxy, the web UI app on its configuration, and that configuration."""
    from webui import create_app
    from webui.state import EXTENSION

    proxy = proxy_factory(CONFIG)
    app = create_app(proxy.config_path)
    storage = app.extensions[EXTENSION].storage
    yield proxy, app, storage, loader.load(proxy.config_path).config
    storage.close()


def test_digest_link_asks_then_releases_once(appliance: Any, recorded: Any) -> None:
    proxy, app, storage, config = appliance
    txid = quarantine(proxy, storage, "lottery for two", [BOB, CAROL])
    recorded.assert_no_messages(within=0.5)
    assert blockreports.send_digest(storage, config, BOB) == 1
    found = digest_links(recorded, BOB)
    release_link = found[("lottery for two", "release")]
    whitelist_link = found[("lottery for two", "release and whitelist the sender")]
    recorded.clear()

    # No login; the GET says what will happen and changes nothing (link scanners GET).
    client = UIClient(app)
    response = client.get(release_link)
    assert response.status_code == 200
    text = page(response)
    assert "Release this message?" in text and f"delivers it to {BOB} only" in text
    assert "lottery for two" in text and SENDER in text and CAROL not in text
    recorded.assert_no_messages(within=1.0)
    assert storage.training.count() == 0 and storage.links.recipients_of(txid) == set()

    # The POST of that page releases to bob alone, through Postfix, learned as ham.
    response = client.post("/blockreport/link", {"token": release_link.split("token=")[1]})
    assert response.status_code == 200, page(response)
    assert f"The message was delivered to {BOB}." in page(response)
    [delivered] = recorded.wait_for(1)
    assert list(delivered.rcpt_tos) == [BOB] and delivered.mail_from == SENDER
    assert delivered.header("X-Postwall-Id") == txid
    assert delivered.header("X-Postwall-Released").startswith(f"by {BOB} at ")
    assert delivered.header("Subject") == "lottery for two"
    [learned] = storage.training.entries()
    assert (learned.label, learned.source, learned.weight, learned.who) == (
        "ham", "quarantine", config.learning.false_positive_weight, BOB)
    [audit] = storage.audit.search(action="blockreport.")
    assert (audit.username, audit.action, audit.target) == (
        f"link:{BOB}", "blockreport.release", f"spam/{txid} for {BOB}")
    assert "learned as ham" in (audit.new_value or "")

    # Replayed, or the message's other link: refused, nothing more happens.
    response = client.post("/blockreport/link", {"token": release_link.split("token=")[1]})
    assert response.status_code == 410 and "this link was already used" in page(response)
    assert client.get(whitelist_link).status_code == 410
    response = client.post("/blockreport/link", {"token": whitelist_link.split("token=")[1]})
    assert response.status_code == 410
    time.sleep(1.0)
    assert len(recorded.messages()) == 1
    assert storage.training.count() == 1 and storage.lists.count("whitelist") == 0
    assert [a.action for a in storage.audit.search(action="blockreport.")] == [
        "blockreport.refused", "blockreport.refused", "blockreport.release"]

    # The administrator's release of the whole message goes to carol only.
    create_user(storage, "admin", ADMIN_PASSWORD, "admin")
    admin = UIClient(app)
    assert admin.login("admin", ADMIN_PASSWORD).status_code == 302
    response = admin.post("/quarantine/release", {"folder": "spam", "txid": txid})
    text = page(admin.get(response.headers["Location"]))
    assert f"Released to {CAROL} (250" in text
    assert f"Not again to {BOB}: they released it from their block report." in text
    [_, second] = recorded.wait_for(2)
    assert list(second.rcpt_tos) == [CAROL]
    assert storage.training.count() == 1  # the same message: already learned as ham


def test_release_and_whitelist_link_and_a_message_released_in_the_ui(appliance: Any,
                                                                     recorded: Any) -> None:
    proxy, app, storage, config = appliance
    kept = quarantine(proxy, storage, "lottery whitelist", [BOB])
    gone = quarantine(proxy, storage, "lottery released", [BOB])
    key = links.load_key(proxy.data_dir)
    lifetime = config.block_reports.link_days * 86400
    client = UIClient(app)

    # Released in the UI first: the recipient's link has nothing left to release.
    create_user(storage, "admin", ADMIN_PASSWORD, "admin")
    admin = UIClient(app)
    assert admin.login("admin", ADMIN_PASSWORD).status_code == 302
    admin.post("/quarantine/release", {"folder": "spam", "txid": gone})
    [released] = recorded.wait_for(1)
    assert released.header("X-Postwall-Released").startswith("by admin at ")
    late = links.sign(key, "release", gone, BOB, lifetime)
    response = client.get(f"/blockreport/link?token={late}")
    assert response.status_code == 410
    assert "this message was already released from the quarantine" in page(response)

    token = links.sign(key, "release_whitelist", kept, BOB, lifetime)
    text = page(client.get(f"/blockreport/link?token={token}"))
    assert "Release and whitelist the sender?" in text
    response = client.post("/blockreport/link", {"token": token})
    assert response.status_code == 200
    assert f"delivered to {BOB}, and {SENDER} is on the whitelist now." in page(response)
    [delivered] = recorded.wait_for_match(header="Subject", value="lottery whitelist")
    assert list(delivered.rcpt_tos) == [BOB]
    entry = storage.lists.get("whitelist", SENDER)
    assert entry is not None and entry.added_by == BOB
    assert [a.action for a in storage.audit.search(action="blockreport.")] == [
        "blockreport.release_whitelist"]
    assert len(recorded.messages()) == 2
