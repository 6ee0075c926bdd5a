"""Logins, lock-out, rate limiting, the forced first password change and sessions."""

from __future__ import annotations

import time

from appliance.storage.types import utcnow
from tests.support.webui import ADMIN_PASSWORD, OPERATOR_PASSWORD, UIClient, create_user
from tests.webui.conftest import Appliance
from webui.passwords import verify_password


def test_login_and_logout(appliance: Appliance, anonymous: UIClient) -> None:
    response = anonymous.login("admin", ADMIN_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert anonymous.get("/").status_code == 200
    assert appliance.storage.users.get("admin").last_login_at is not None
    response = anonymous.post("/logout")
    assert response.status_code == 302
    assert anonymous.get("/").status_code == 302
    actions = [e.action for e in appliance.storage.audit.search()]
    assert actions[:2] == ["auth.logout", "auth.login"]


def test_login_returns_to_the_page_asked_for_but_never_off_site(anonymous: UIClient) -> None:
    assert anonymous.get("/lists/blacklist").headers["Location"] == "/login?next=/lists/blacklist"
    anonymous.get("/login?next=/lists/blacklist")
    response = anonymous.post("/login", {"username": "admin", "password": ADMIN_PASSWORD,
                                         "next": "/lists/blacklist"})
    assert response.headers["Location"] == "/lists/blacklist"
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        other = UIClient(anonymous.app)
        other.get("/login")
        response = other.post("/login", {"username": "admin", "password": ADMIN_PASSWORD,
                                         "next": target})
        assert response.headers["Location"] == "/", target


def test_wrong_password_and_unknown_user_get_the_same_answer(
    appliance: Appliance, anonymous: UIClient
) -> None:
    wrong = anonymous.login("admin", "not the password")
    unknown = anonymous.login("nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    text = wrong.get_data(as_text=True)
    assert "Wrong user name or password" in text
    assert text.count("Wrong user name") == 1
    assert anonymous.get("/").status_code == 302
    assert appliance.storage.users.get("admin").failed_logins == 1


def test_five_wrong_passwords_lock_the_account(appliance: Appliance,
                                               anonymous: UIClient) -> None:
    signed_in = appliance.client()
    signed_in.login("oper", OPERATOR_PASSWORD)
    assert signed_in.get("/log").status_code == 200
    for _ in range(5):
        assert anonymous.login("oper", "guess").status_code == 401
    user = appliance.storage.users.get("oper")
    assert user.is_locked()
    # Locked: even the right password is refused, and open sessions ended.
    assert anonymous.login("oper", OPERATOR_PASSWORD).status_code == 401
    assert signed_in.get("/log").status_code == 302
    assert appliance.storage.audit.search(action="auth.locked")[0].target == "oper"
    # An admin unlocks it.
    admin = appliance.client()
    admin.login("admin", ADMIN_PASSWORD)
    assert admin.post("/users/oper/unlock").status_code == 302
    assert anonymous.login("oper", OPERATOR_PASSWORD).status_code == 302


def test_too_many_failures_from_one_address_are_refused(appliance: Appliance,
                                                        anonymous: UIClient) -> None:
    for _ in range(20):
        appliance.storage.users.note_failed_login("192.0.2.10", "someone")
    response = anonymous.login("admin", ADMIN_PASSWORD)
    assert response.status_code == 429
    assert "Too many failed logins" in response.get_data(as_text=True)
    other = appliance.client()
    other.client.environ_base["REMOTE_ADDR"] = "192.0.2.99"
    assert other.login("admin", ADMIN_PASSWORD).status_code == 302


def test_first_login_forces_a_password_change(appliance: Appliance) -> None:
    create_user(appliance.storage, "fresh", "one-time password 1", "operator", must_change=True)
    client = appliance.client()
    response = client.login("fresh", "one-time password 1")
    assert response.headers["Location"] == "/account/password"
    for url in ("/", "/lists/whitelist", "/log"):
        response = client.get(url)
        assert response.status_code == 302 and response.headers["Location"] == "/account/password"
    assert client.post("/lists/whitelist/add", {"value": "a@b.example"}).status_code == 302
    assert appliance.storage.lists.count("whitelist") == 0
    response = client.post("/account/password", {
        "current": "one-time password 1", "new": "my own secret words", "confirm":
        "my own secret words"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/lists/whitelist").status_code == 200
    user = appliance.storage.users.get("fresh")
    assert not user.must_change_password
    assert verify_password(user.password_hash, "my own secret words")


def test_bad_new_passwords_are_refused_inline_and_nothing_changes(
    appliance: Appliance, operator: UIClient
) -> None:
    cases = [
        ({"current": "wrong", "new": "a fine new password", "confirm": "a fine new password"},
         "not your current password"),
        ({"current": OPERATOR_PASSWORD, "new": "a fine new password", "confirm": "different"},
         "the two new passwords differ"),
        ({"current": OPERATOR_PASSWORD, "new": "short", "confirm": "short"},
         "at least 12 characters"),
        ({"current": OPERATOR_PASSWORD, "new": OPERATOR_PASSWORD,
          "confirm": OPERATOR_PASSWORD}, "must differ from the current password"),
        ({"current": OPERATOR_PASSWORD, "new": "aaaaaaaaaaaaaaaa", "confirm": "aaaaaaaaaaaaaaaa"},
         "too repetitive"),
    ]
    before = appliance.storage.users.get("oper").password_hash
    for form, message in cases:
        response = operator.post("/account/password", form)
        assert response.status_code == 400, message
        assert message in response.get_data(as_text=True)
    assert appliance.storage.users.get("oper").password_hash == before


def test_a_password_change_ends_other_sessions(appliance: Appliance) -> None:
    first, second = appliance.client(), appliance.client()
    first.login("oper", OPERATOR_PASSWORD)
    second.login("oper", OPERATOR_PASSWORD)
    response = first.post("/account/password", {
        "current": OPERATOR_PASSWORD, "new": "another long phrase", "confirm":
        "another long phrase"})
    assert response.status_code == 302
    assert first.get("/log").status_code == 200
    assert second.get("/log").status_code == 302


def test_sessions_expire_when_idle_and_after_their_maximum(appliance: Appliance,
                                                           operator: UIClient) -> None:
    assert operator.get("/log").status_code == 200
    with operator.client.session_transaction(base_url="https://localhost") as session:
        session["seen"] = int(time.time()) - 31 * 60  # idle limit: 30 minutes
    assert operator.get("/log").status_code == 302
    again = appliance.client()
    again.login("oper", OPERATOR_PASSWORD)
    with again.client.session_transaction(base_url="https://localhost") as session:
        session["auth_at"] = int(time.time()) - 13 * 3600  # maximum: 12 hours
    assert again.get("/log").status_code == 302


def test_a_removed_or_demoted_user_loses_access_at_once(appliance: Appliance,
                                                        admin: UIClient) -> None:
    other = appliance.client()
    create_user(appliance.storage, "second", ADMIN_PASSWORD, "admin")
    other.login("second", ADMIN_PASSWORD)
    assert other.get("/users").status_code == 200
    assert admin.post("/users/second/role", {"role": "operator"}).status_code == 302
    assert other.get("/users").status_code == 302  # the session ended with the role change
    other.login("second", ADMIN_PASSWORD)
    assert other.get("/users").status_code == 403
    assert admin.post("/users/second/delete").status_code == 302
    assert other.get("/log").status_code == 302
    assert appliance.storage.users.get("second") is None


def test_failed_login_records_are_counted_per_address(appliance: Appliance) -> None:
    users = appliance.storage.users
    users.note_failed_login("192.0.2.1", "x")
    users.note_failed_login("192.0.2.1", "y")
    users.note_failed_login("192.0.2.2", "x")
    since = utcnow().replace(year=2000)
    assert users.failed_logins_since("192.0.2.1", since) == 2
    assert users.purge_failed_logins(utcnow().replace(year=2100)) == 3
    assert users.failed_logins_since("192.0.2.1", since) == 0
