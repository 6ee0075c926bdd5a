"""The web UI against the real thing: the proxy's control socket (live sessions, reload),
a configuration change applied to a running proxy, a quarantined message released
through the real Postfix to the recording server, and the health checks."""

from __future__ import annotations

import html
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.config import loader
from appliance.control import ControlClient, config_fingerprint, socket_path
from appliance.status import State, run_checks
from tests.support.services import ProxyProcess, wait_until
from tests.support.smtpclient import SMTPClient, send_message
from tests.support.webui import ADMIN_PASSWORD, UIClient, create_user

# BOMB_SUBJECT weighs 3: "meeting" scores 3 (below tag = 5), "lottery" 9 (quarantine).
RULES = {"filters": {"regex": {"bomb_subject_re": [
    {"pattern": "meeting", "weight": 1}, {"pattern": "lottery", "weight": 3}]}},
    "scoring": {"quarantine_delivers": "no"}}


def message(subject: str, sender: str = "alice@partner.example") -> bytes:
    return (f"From: <{sender}>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@partner.example>\r\n\r\nHello Bob.\r\n").encode()


def send(proxy: ProxyProcess, content: bytes, sender: str = "alice@partner.example") -> Any:
    host, port = proxy.inbound
    return send_message(host, port, content, mail_from=sender, rcpt_tos=["bob@example.com"])


def logged_action(storage: Any, subject: str, timeout: float = 10.0) -> str:
    found: list[str] = []

    def look() -> bool:
        entries = storage.messagelog.search(subject=subject)
        found[:] = [e.action for e in entries]
        return bool(found)

    assert wait_until(look, timeout), f"no message log entry for {subject!r}"
    return found[0]


@pytest.fixture
def ui(proxy_factory: Any) -> Iterator[tuple[ProxyProcess, Any, UIClient]]:
    """A running proxy with RULES, and the web UI app on its configuration (admin)."""
    from webui import create_app
    from webui.state import EXTENSION

    proxy = proxy_factory(RULES)
    app = create_app(proxy.config_path)
    storage = app.extensions[EXTENSION].storage
    create_user(storage, "admin", ADMIN_PASSWORD, "admin")
    client = UIClient(app)
    assert client.login("admin", ADMIN_PASSWORD).status_code == 302
    yield proxy, storage, client
    storage.close()


# -- the control socket -------------------------------------------------------------------


def test_control_socket_per_worker_is_private(proxy_factory: Any) -> None:
    proxy = proxy_factory(workers=2)
    control = ControlClient(proxy.data_dir)
    assert wait_until(lambda: len(control.workers()) == 2, 10)
    expected = config_fingerprint(loader.load(proxy.config_path).config)
    workers = control.workers()
    assert sorted(w.worker for w in workers) == [0, 1]
    assert all(w.config == expected and not w.draining for w in workers)
    for index in (0, 1):
        path = socket_path(proxy.data_dir, index)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_control_socket_refuses_nonsense(proxy: ProxyProcess) -> None:
    control = ControlClient(proxy.data_dir)
    assert wait_until(lambda: bool(control.workers()), 10)
    path = socket_path(proxy.data_dir, 0)
    import socket

    for request, error in ((b"hello\n", "not a JSON object"),
                           (b'{"command": "shutdown"}\n', "unknown command"),
                           (b"x" * 10000 + b"\n", "request too long")):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(request)
            reply = sock.recv(4096)
        assert error in reply.decode(), request[:20]
    assert proxy.is_running and control.workers()


def test_live_sessions_show_client_stage_sender_and_recipients(proxy: ProxyProcess) -> None:
    control = ControlClient(proxy.data_dir)
    assert wait_until(lambda: bool(control.workers()), 10)
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo("client.partner.example")
        assert wait_until(lambda: [s.stage for s in control.sessions()] == ["helo"], 5)
        smtp.mail("alice@partner.example")
        assert smtp.rcpt("bob@example.com").code == 250
        [session] = control.sessions()
        assert (session.client_ip, session.listener, session.stage, session.helo) == (
            "127.0.0.1", "inbound", "rcpt", "client.partner.example")
        assert session.sender == "alice@partner.example"
        assert session.recipients == ["bob@example.com"]
        assert smtp.command("DATA").code == 354
        smtp.send_raw(b"Subject: half\r\n\r\nstill typing")
        assert wait_until(lambda: [s.stage for s in control.sessions()] == ["data"], 5)
    assert wait_until(lambda: control.sessions() == [], 5)


def test_reload_over_the_socket_keeps_open_sessions(proxy: ProxyProcess, recorded: Any) -> None:
    control = ControlClient(proxy.data_dir)
    assert wait_until(lambda: bool(control.workers()), 10)
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo()
        smtp.mail("alice@partner.example")
        smtp.rcpt("bob@example.com")
        proxy.update_config({"smtp": {"banner": "ESMTP reloaded"}})
        expected = config_fingerprint(loader.load(proxy.config_path).config)
        assert control.reload() == int((proxy.data_dir / "run" / "serve.lock").read_text())
        workers = control.wait_for_config(expected, 15)
        assert [w.config for w in workers] == [expected]
        assert smtp.data(message("across the reload")).code == 250
    recorded.wait_for(1)
    with SMTPClient(*proxy.inbound) as smtp:
        assert "ESMTP reloaded" in smtp.greeting.text


# -- the web UI on a running proxy ------------------------------------------------------------


def test_a_threshold_applied_in_the_ui_changes_the_action(ui: Any, recorded: Any) -> None:
    proxy, storage, client = ui
    assert send(proxy, message("meeting one")).accepted
    assert logged_action(storage, "meeting one") == "deliver"
    response = client.post("/config/scoring.thresholds", {"scoring.thresholds.tag": "2"})
    page = html.unescape(client.get(response.headers["Location"]).get_data(as_text=True))
    assert "Applied: 1 worker(s) reloaded without dropping connections." in page
    assert send(proxy, message("meeting two")).accepted
    assert logged_action(storage, "meeting two") == "tag"
    [tagged] = recorded.wait_for_match(header="Subject", value="meeting two")
    assert tagged.header("Subject") == "[SPAM] meeting two"
    assert tagged.header("X-Spam-Status").startswith("Yes, score=3")


def test_quarantined_mail_is_released_once_to_the_internal_server(ui: Any,
                                                                  recorded: Any) -> None:
    proxy, storage, client = ui
    assert send(proxy, message("lottery win"), sender="promo@lotto.example").accepted
    assert logged_action(storage, "lottery win") == "quarantine"
    recorded.assert_no_messages(within=1.0)  # quarantine_delivers: no
    [entry] = storage.messagelog.search(subject="lottery win")
    assert storage.mail.exists("spam", entry.id)
    page = client.get(f"/quarantine/view?folder=spam&id={entry.id}").get_data(as_text=True)
    assert 'id="release"' in page
    response = client.post("/quarantine/release", {"folder": "spam", "txid": entry.id})
    page = html.unescape(client.get(response.headers["Location"]).get_data(as_text=True))
    assert "Released to bob@example.com (250" in page
    assert 'Classifier: learned as ham: "lottery win"' in page
    assert "A message is released only once." in page
    # Released = ham, weighted as a false positive, in the training ledger.
    [learned] = storage.training.entries()
    assert (learned.label, learned.source, learned.who, learned.subject) == (
        "ham", "quarantine", "admin", "lottery win")
    assert learned.weight == loader.load(proxy.config_path).config.learning.false_positive_weight
    [delivered] = recorded.wait_for(1)
    assert delivered.mail_from == "promo@lotto.example"
    assert list(delivered.rcpt_tos) == ["bob@example.com"]
    assert delivered.header("X-Postwall-Id") == entry.id
    assert delivered.header("X-Postwall-Released").startswith("by admin at ")
    assert delivered.header("Subject") == "lottery win"  # as it arrived: not filtered again
    # Once: a second release is refused and nothing more arrives.
    response = client.post("/quarantine/release", {"folder": "spam", "txid": entry.id})
    page = html.unescape(client.get(response.headers["Location"]).get_data(as_text=True))
    assert f"Not released: {entry.id} was already released by admin" in page
    time.sleep(1.0)
    assert len(recorded.messages()) == 1
    assert storage.training.count() == 1
    release = storage.releases.get(entry.id)
    assert release.state == "delivered" and release.reply.startswith("250")
    [audit] = storage.audit.search(action="quarantine.release")
    assert audit.target == f"spam/{entry.id}" and "bob@example.com" in audit.new_value


def test_connections_page_lists_a_live_session(ui: Any) -> None:
    proxy, _, client = ui
    with SMTPClient(*proxy.inbound) as smtp:
        smtp.ehlo("watcher.partner.example")
        smtp.mail("carol@partner.example")
        page = client.get("/connections/table").get_data(as_text=True)
        assert "watcher.partner.example" in page and "&lt;carol@partner.example&gt;" in page
        assert '<span class="badge stage-mail">mail</span>' in page


def test_health_checks_see_the_proxy_and_postfix(proxy: ProxyProcess) -> None:
    config = loader.load(proxy.config_path).config
    assert wait_until(lambda: bool(ControlClient(proxy.data_dir).workers()), 10)
    results = {r.name: r for r in run_checks(config)}
    assert results["proxy"].state is State.OK, results["proxy"]
    assert results["proxy"].summary.startswith("1 worker(s)")
    assert results["postfix"].state is State.OK, results["postfix"]
    assert results["disk"].state in (State.OK, State.WARN)
    proxy.stop()
    results = {r.name: r for r in run_checks(config)}
    assert results["proxy"].state is State.FAIL
