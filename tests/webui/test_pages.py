"""Lists, message log, quarantine, analyzer, connections, dashboard, users and audit
through the Flask test client (the proxy and Postfix are not running here; the tests
that need them are in tests/integration/test_webui_live.py)."""

from __future__ import annotations

import html
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.storage.messagelog import MessageLogEntry
from tests.support.webui import ADMIN_PASSWORD, UIClient
from tests.webui.conftest import Appliance
from webui.passwords import verify_password

# -- lists ------------------------------------------------------------------------------


def test_add_search_expire_and_remove_a_list_entry(appliance: Appliance,
                                                   operator: UIClient) -> None:
    response = operator.post("/lists/blacklist/add", {"value": "Spammer@Bad.Example",
                                                      "comment": "phishing", "days": "7"})
    assert response.status_code == 302
    entry = appliance.storage.lists.get("blacklist", "spammer@bad.example")
    assert entry is not None and entry.added_by == "oper" and entry.comment == "phishing"
    assert timedelta(days=6.9) < entry.expires_at - datetime.now(UTC) < timedelta(days=7.1)
    page = operator.get("/lists/blacklist?q=bad.example").get_data(as_text=True)
    assert "spammer@bad.example" in page and "phishing" in page
    assert "spammer@bad.example" not in operator.get("/lists/blacklist?q=nomatch").get_data(
        as_text=True)
    response = operator.post("/lists/blacklist/remove", {"value": "spammer@bad.example"})
    assert response.status_code == 302
    assert appliance.storage.lists.count("blacklist") == 0
    actions = [(e.action, e.target) for e in appliance.storage.audit.search(action="lists.")]
    assert actions == [("lists.remove", "blacklist: spammer@bad.example"),
                       ("lists.add", "blacklist: spammer@bad.example")]
    remove = appliance.storage.audit.search(action="lists.remove")[0]
    assert "phishing" in remove.old_value and remove.new_value is None


@pytest.mark.parametrize(("name", "value", "message"), [
    ("whitelist", "two@at@example.org", "more than one '@'"),
    ("whitelist", "*", "would match every address"),
    ("whitelist", "/(unclosed/", "invalid regular expression"),
    ("ip_allow", "not-an-ip", "is not an IP address or CIDR network"),
    ("whitelist", "", "This field is required."),
])
def test_bad_list_values_are_inline_errors(appliance: Appliance, operator: UIClient,
                                           name: str, value: str, message: str) -> None:
    response = operator.post(f"/lists/{name}/add", {"value": value})
    assert response.status_code == 400
    assert message in html.unescape(response.get_data(as_text=True))
    assert appliance.storage.lists.count(name) == 0
    assert appliance.storage.audit.count() == 1  # the login only


def test_bad_expiry_is_refused(appliance: Appliance, operator: UIClient) -> None:
    for days in ("0", "-3", "soon"):
        response = operator.post("/lists/whitelist/add", {"value": "a@b.example", "days": days})
        assert response.status_code == 400, days
    assert appliance.storage.lists.count("whitelist") == 0


def test_import_is_all_or_nothing_and_export_round_trips(appliance: Appliance,
                                                         operator: UIClient) -> None:
    bad = "good@example.org\n# a comment line\nbad value here\n@example.net # partner\n"
    response = operator.post("/lists/whitelist/import", {"import-text": bad})
    assert response.status_code == 400
    assert "line 3:" in html.unescape(response.get_data(as_text=True))
    assert appliance.storage.lists.count("whitelist") == 0
    good = "good@example.org\n\n# a comment line\n@example.net # partner\n*.example.com\n"
    response = operator.post("/lists/whitelist/import", {
        "import-file": (io.BytesIO(good.encode()), "list.txt"), "import-days": "30"},
        content_type="multipart/form-data")
    assert response.status_code == 302
    assert appliance.storage.lists.count("whitelist") == 3
    assert appliance.storage.lists.get("whitelist", "@example.net").comment == "partner"
    exported = operator.get("/lists/whitelist/export")
    assert exported.headers["Content-Disposition"].startswith("attachment")
    lines = exported.get_data(as_text=True).splitlines()
    assert lines[1:] == ["*.example.com", "@example.net # partner", "good@example.org"]


def test_unknown_list_is_404(operator: UIClient) -> None:
    assert operator.get("/lists/greylist").status_code == 404
    assert operator.post("/lists/greylist/add", {"value": "a@b.example"}).status_code == 404


def test_entries_of_the_base_file_are_shown_read_only(appliance: Appliance) -> None:
    import yaml

    config = yaml.safe_load(appliance.config_path.read_text())
    config["filters"] = {"address_lists": {"whitelist": ["@partner.example"]}}
    appliance.config_path.write_text(yaml.safe_dump(config))
    client = appliance.client()
    client.login("admin", ADMIN_PASSWORD)
    page = client.get("/lists/whitelist").get_data(as_text=True)
    assert "From the base file" in page and "@partner.example" in page


# -- message log ------------------------------------------------------------------------


def log_entry(txid: str, **fields: object) -> MessageLogEntry:
    values: dict[str, object] = {
        "id": txid, "time": datetime.now(UTC), "listener": "inbound",
        "client_ip": "198.51.100.7", "helo": "mx.sender.example",
        "sender": "alice@sender.example", "recipients": ["bob@example.com"],
        "subject": "hello", "size": 1234, "symbols": [], "total": 0.0, "action": "deliver",
        "reply": "250 2.0.0 Ok", "downstream_reply": "250 2.0.0 Ok: queued as ABC",
    }
    values.update(fields)
    return MessageLogEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def logged(appliance: Appliance) -> Appliance:
    now = datetime.now(UTC)
    appliance.storage.messagelog.record_many([
        log_entry("a1", time=now - timedelta(hours=1)),
        log_entry("a2", sender="spam@bulk.example", subject="Cheap pills", action="reject",
                  total=14.0, client_ip="203.0.113.9",
                  symbols=[("BOMB_RE", 9.0, "bombRe 'pills' matched"),
                           ("SIZE_BIG", 5.0, "large")],
                  reply="550 5.7.1 Message rejected as spam", downstream_reply=None),
        log_entry("a3", sender="friend@partner.example", symbols=[("WHITELISTED", -10.0,
                  "friend@partner.example matches @partner.example")], total=-10.0),
        log_entry("a4", subject="tagged one", action="tag", total=6.0,
                  symbols=[("BOMB_RE", 6.0, "bombRe 'offer' matched")],
                  time=now - timedelta(days=2)),
    ])
    return appliance


def test_message_log_search_and_colours(logged: Appliance, operator: UIClient) -> None:
    page = operator.get("/log").get_data(as_text=True)
    assert page.count('<tr class="row-') == 4
    assert 'class="row-spam"' in page and 'class="row-ham"' in page
    assert 'class="row-ok"' in page  # whitelisted mail is "ok", grey
    assert 'class="row-tagged"' in page
    page = operator.get("/log?sender=bulk&action=reject").get_data(as_text=True)
    assert page.count('<tr class="row-') == 1 and "Cheap pills" in page
    page = operator.get("/log?ip=203.0.113.9").get_data(as_text=True)
    assert page.count('<tr class="row-') == 1
    page = operator.get("/log?recipient=bob@&subject=tagged").get_data(as_text=True)
    assert page.count('<tr class="row-') == 1
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    page = operator.get(f"/log?since={since}").get_data(as_text=True)
    assert page.count('<tr class="row-') == 3


def test_bad_log_filters_are_inline_errors(logged: Appliance, operator: UIClient) -> None:
    response = operator.get("/log?ip=not-an-ip&since=yesterday&action=bounce")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "not an IP address" in page and "use YYYY-MM-DD HH:MM (UTC)" in page
    assert "unknown action" in page
    assert '<tr class="row-' not in page


def test_message_detail_explains_the_verdict(logged: Appliance, operator: UIClient) -> None:
    page = html.unescape(operator.get("/log/a2").get_data(as_text=True))
    assert "BOMB_RE" in page and "bombRe 'pills' matched" in page and "+9.00" in page
    assert "550 5.7.1 Message rejected as spam" in page
    page = operator.get("/log/a1").get_data(as_text=True)
    assert "250 2.0.0 Ok: queued as ABC" in page
    assert operator.get("/log/unknown").status_code == 404


# -- quarantine -------------------------------------------------------------------------

HOSTILE = (
    b"From: Mallory <mallory@evil.example>\r\nTo: bob@example.com\r\n"
    b"Subject: =?utf-8?q?Your_invoice_=E2=82=AC?=\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><head><script>alert('x')</script><style>p{}</style></head><body>"
    b"<p>Pay <a href=\"https://evil.example/pay\">here</a></p><img src=\"https://evil.example/t.gif\">"
    b"<iframe src=\"https://evil.example/\"></iframe></body></html>\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="invoice.exe"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n"
)


@pytest.fixture
def kept(appliance: Appliance) -> Appliance:
    appliance.storage.mail.keep("spam", "q1", HOSTILE)
    appliance.storage.messagelog.record(log_entry(
        "q1", sender="mallory@evil.example", subject="Your invoice €", action="quarantine",
        total=9.0, symbols=[("BAD_ATTACH", 9.0, "invoice.exe")]))
    return appliance


def test_quarantine_lists_kept_mail(kept: Appliance, operator: UIClient) -> None:
    page = operator.get("/quarantine").get_data(as_text=True)
    assert "Your invoice €" in page and "mallory@evil.example" in page
    assert operator.get("/quarantine?folder=errors/spam").status_code == 200
    assert operator.get("/quarantine?folder=../etc").status_code == 404


def test_quarantined_html_is_shown_as_text_and_never_rendered(kept: Appliance,
                                                              operator: UIClient) -> None:
    response = operator.get("/quarantine/view?folder=spam&id=q1")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<script>alert" not in page and "<iframe" not in page and "<img src" not in page
    assert "alert(" not in page  # script content is dropped, not just escaped
    text = html.unescape(page)
    assert "Pay here [https://evil.example/pay]" in text
    assert "invoice.exe" in text and "application/octet-stream" in text
    assert "Your invoice €" in text
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    raw = operator.get("/quarantine/download?folder=spam&id=q1")
    assert raw.data == HOSTILE
    assert raw.headers["Content-Disposition"] == 'attachment; filename="q1.eml"'
    assert raw.mimetype == "application/octet-stream"


def test_bad_quarantine_references_are_404(kept: Appliance, operator: UIClient) -> None:
    for url in ("/quarantine/view?folder=spam&id=../../etc/passwd",
                "/quarantine/view?folder=nope&id=q1", "/quarantine/view?folder=spam&id=q2",
                "/quarantine/download?folder=spam&id=..%2Fx"):
        assert operator.get(url).status_code == 404, url
    response = operator.post("/quarantine/delete", {"folder": "spam", "txid": "../x"})
    assert response.status_code == 404
    assert operator.post("/quarantine/delete", {"folder": "spam"}).status_code == 400
    assert kept.storage.mail.exists("spam", "q1")


def test_report_spam_and_not_spam_feed_the_classifier_folders(kept: Appliance,
                                                              operator: UIClient) -> None:
    operator.post("/quarantine/report", {"folder": "spam", "txid": "q1", "kind": "notspam"})
    assert kept.storage.mail.read("errors/notspam", "q1") == HOSTILE
    operator.post("/quarantine/report", {"folder": "spam", "txid": "q1", "kind": "spam"})
    assert kept.storage.mail.read("errors/spam", "q1") == HOSTILE
    assert not kept.storage.mail.exists("errors/notspam", "q1")  # the latest report wins
    response = operator.post("/quarantine/report", {"folder": "spam", "txid": "q1",
                                                    "kind": "ham"})
    assert response.status_code == 302
    page = operator.get(response.headers["Location"]).get_data(as_text=True)
    assert "Not reported: unknown report" in html.unescape(page)
    assert [e.action for e in kept.storage.audit.search(action="quarantine.")] == [
        "quarantine.report_spam", "quarantine.report_notspam"]


def test_reports_are_learned_by_the_error_folder_scan(kept: Appliance,
                                                      operator: UIClient) -> None:
    """What the learning loop of worker 0 does every learning.folder_scan_seconds."""
    from appliance.learning_loop import learn_weights, learner_for

    config = state_of(kept).loaded.config
    learner = learner_for(kept.storage, config)
    operator.post("/quarantine/report", {"folder": "spam", "txid": "q1", "kind": "notspam"})
    [result] = learner.scan_error_folders(learn_weights(config))
    assert (result.status, result.label) == ("learned", "ham")
    [entry] = kept.storage.training.entries()
    assert (entry.label, entry.source, entry.weight) == (
        "ham", "folder", config.learning.false_positive_weight)
    operator.post("/quarantine/report", {"folder": "spam", "txid": "q1", "kind": "spam"})
    [result] = learner.scan_error_folders(learn_weights(config))
    assert (result.status, result.label) == ("corrected", "spam")
    [entry] = kept.storage.training.entries()
    assert (entry.label, entry.weight) == ("spam", config.learning.false_negative_weight)
    assert learner.scan_error_folders(learn_weights(config)) == []  # settled, no flip-flop


def state_of(appliance: Appliance) -> Any:
    from webui.state import EXTENSION

    return appliance.app.extensions[EXTENSION]


def test_sender_or_domain_onto_a_list(kept: Appliance, operator: UIClient) -> None:
    operator.post("/quarantine/list", {"folder": "spam", "txid": "q1",
                                       "list_name": "blacklist", "what": "domain"})
    assert kept.storage.lists.get("blacklist", "@evil.example") is not None
    operator.post("/quarantine/list", {"folder": "spam", "txid": "q1",
                                       "list_name": "whitelist", "what": "sender"})
    assert kept.storage.lists.get("whitelist", "mallory@evil.example") is not None
    response = operator.post("/quarantine/list", {"folder": "spam", "txid": "q1",
                                                  "list_name": "ip_allow", "what": "sender"})
    assert response.status_code == 400
    assert kept.storage.lists.count("ip_allow") == 0


def test_delete_a_kept_message(kept: Appliance, operator: UIClient) -> None:
    response = operator.post("/quarantine/delete", {"folder": "spam", "txid": "q1"})
    assert response.status_code == 302
    assert not kept.storage.mail.exists("spam", "q1")
    assert kept.storage.audit.search(action="quarantine.delete")[0].target == "spam/q1"


def test_release_without_postfix_fails_cleanly_and_can_be_retried(kept: Appliance,
                                                                  operator: UIClient) -> None:
    response = operator.post("/quarantine/release", {"folder": "spam", "txid": "q1"})
    page = html.unescape(operator.get(response.headers["Location"]).get_data(as_text=True))
    assert "Not released: cannot hand the message to 127.0.0.1:9" in page
    assert kept.storage.releases.get("q1") is None  # the claim was given back
    assert kept.storage.audit.count(action="quarantine.release") == 0
    assert kept.storage.training.count() == 0  # not delivered: not learned as ham either


# -- analyzer ---------------------------------------------------------------------------


def test_analyzer_shows_every_symbol(appliance: Appliance, operator: UIClient) -> None:
    appliance.storage.lists.add("blacklist", "@bulk.example")
    message = "From: x@bulk.example\nTo: bob@example.com\nSubject: hi\n\nbody\n"
    response = operator.post("/analyzer", {"message": message, "client_ip": "203.0.113.5",
                                           "helo": "mx.bulk.example"})
    page = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 200
    assert "BLACKLISTED" in page and "x@bulk.example matches @bulk.example" in page
    assert 'class="badge spam">reject' in page
    assert "x@bulk.example → bob@example.com" in page


def test_analyzer_upload_and_bad_input(appliance: Appliance, operator: UIClient) -> None:
    upload = b"From: a@partner.example\r\nTo: bob@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    response = operator.post("/analyzer", {
        "file": (io.BytesIO(upload), "m.eml"), "client_ip": "192.0.2.1",
        "helo": "mail.partner.example"}, content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    # An untrained classifier is unsure (score 0): the message is delivered.
    assert response.status_code == 200 and 'class="badge ham">deliver' in page
    assert "BAYES_UNSURE" in page
    response = operator.post("/analyzer", {"message": "", "client_ip": "192.0.2.1",
                                           "helo": "h"})
    assert response.status_code == 400
    assert "paste a message or choose a file" in response.get_data(as_text=True)
    response = operator.post("/analyzer", {"message": "Subject: x\n\ny", "client_ip": "999.1",
                                           "helo": "h"})
    assert response.status_code == 400 and "not an IP address" in response.get_data(as_text=True)


# -- dashboard, connections -----------------------------------------------------------


def test_dashboard_counts_health_and_top_symbols(logged: Appliance, operator: UIClient) -> None:
    page = operator.get("/").get_data(as_text=True)
    for name in ("proxy", "postfix", "clamd", "dns", "disk", "backup", "list_files"):
        assert f'data-check="{name}"' in page
    for name in ("postfix_config", "clamd_signatures", "certificates", "hostname_ptr",
                 "own_dnsbl", "versions"):  # the self-checks, from the same status.py
        assert f'data-check="{name}"' in page
    assert 'class="tile state-fail" data-check="proxy"' in page
    assert "not running: no worker answers on the control socket" in page
    assert '<rect class="a-reject"' in page and '<rect class="a-deliver"' in page
    assert "(3 messages)" in page  # last 24 hours; the tagged one is two days old
    assert "(4 messages)" in page  # last 14 days
    assert "<code>BOMB_RE</code>" in page and "<code>SIZE_BIG</code>" in page


def test_connections_without_a_proxy(operator: UIClient) -> None:
    page = operator.get("/connections").get_data(as_text=True)
    assert "The proxy is not running" in page
    assert 'data-refresh="/connections/table"' in page
    fragment = operator.get("/connections/table").get_data(as_text=True)
    assert "<html" not in fragment and "No open SMTP sessions" in fragment


# -- users and audit --------------------------------------------------------------------


def test_add_a_user_with_a_one_time_password(appliance: Appliance, admin: UIClient) -> None:
    response = admin.post("/users/add", {"username": "carol", "role": "operator"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    password = page.split('<code id="new-password">')[1].split("</code>")[0]
    assert len(password) >= 20
    user = appliance.storage.users.get("carol")
    assert user.role == "operator" and user.must_change_password
    assert verify_password(user.password_hash, password)
    assert password not in str([vars(e) if hasattr(e, "__dict__") else e
                                for e in appliance.storage.audit.search()])
    assert admin.get("/users").get_data(as_text=True).count(password) == 0  # shown once
    client = appliance.client()
    assert client.login("carol", password).headers["Location"] == "/account/password"


def test_bad_user_input_is_refused(appliance: Appliance, admin: UIClient) -> None:
    for form, message in (({"username": "Bad Name", "role": "operator"}, "a user name is"),
                          ({"username": "admin", "role": "operator"}, "already exists"),
                          ({"username": "dave", "role": "root"}, "Not a valid choice")):
        response = admin.post("/users/add", form)
        assert response.status_code == 400
        assert message in html.unescape(response.get_data(as_text=True))
    assert [u.username for u in appliance.storage.users.all()] == ["admin", "oper"]


def test_the_last_admin_stays(appliance: Appliance, admin: UIClient) -> None:
    assert admin.post("/users/admin/role", {"role": "operator"}).status_code == 400
    assert admin.post("/users/admin/delete").status_code == 400
    assert appliance.storage.users.get("admin").role == "admin"
    assert admin.post("/users/nobody/delete").status_code == 404


def test_reset_password_and_audit_page(appliance: Appliance, admin: UIClient) -> None:
    old = appliance.storage.users.get("oper").password_hash
    page = admin.post("/users/oper/reset-password").get_data(as_text=True)
    assert 'id="new-password"' in page
    user = appliance.storage.users.get("oper")
    assert user.password_hash != old and user.must_change_password
    page = admin.get("/audit?action=users.").get_data(as_text=True)
    assert "users.reset_password" in page and "oper" in page
    page = admin.get("/audit?user=nobody").get_data(as_text=True)
    assert "No entries." in page
