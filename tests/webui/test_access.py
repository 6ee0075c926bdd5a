"""Every route of the web UI: it has an access rule, needs a login unless public, refuses
a POST without its CSRF token, and refuses operators where only admins may go."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.routing import Rule

from tests.webui.conftest import Appliance
from webui import access

SAMPLE_ARGUMENTS = {"name": "whitelist", "key": "general", "txid": "0123abcd",
                    "username": "oper", "filename": "style.css"}


def all_rules(app: Any) -> list[Rule]:
    return sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint))


def url_of(rule: Rule) -> str:
    url = rule.rule
    for argument in rule.arguments:
        url = url.replace(f"<{argument}>", SAMPLE_ARGUMENTS[argument])
        url = url.replace(f"<path:{argument}>", SAMPLE_ARGUMENTS[argument])
    return url


def rules_with(appliance: Appliance, method: str, level: str | None = None) -> list[Rule]:
    found = []
    for rule in all_rules(appliance.app):
        view = appliance.app.view_functions[rule.endpoint]
        if method in (rule.methods or ()) and (level is None or access.rule_of(view) == level):
            found.append(rule)
    return found


def test_every_route_has_an_access_rule(appliance: Appliance) -> None:
    missing = [
        f"{rule.rule} ({rule.endpoint})"
        for rule in all_rules(appliance.app)
        if access.rule_of(appliance.app.view_functions[rule.endpoint]) is None
    ]
    assert missing == [], f"routes without an access rule: {missing}"
    # The inventory is not empty by accident: every concern has its routes.
    endpoints = {rule.endpoint.split(".")[0] for rule in all_rules(appliance.app)}
    assert {"auth", "dashboard", "configuration", "lists", "messages", "quarantine",
            "analyzer", "connections", "users", "static"} <= endpoints


def test_a_view_without_a_rule_is_refused_even_to_admins(appliance: Appliance) -> None:
    app = appliance.app

    def forgotten() -> str:
        return "secret"

    app.add_url_rule("/forgotten", "forgotten", forgotten)
    client = appliance.client()
    response = client.get("/forgotten")
    assert response.status_code == 403
    assert b"secret" not in response.data


def test_public_routes_are_only_login_logout_and_static(appliance: Appliance) -> None:
    public = {rule.endpoint for rule in all_rules(appliance.app)
              if access.rule_of(appliance.app.view_functions[rule.endpoint]) == access.PUBLIC}
    assert public == {"auth.login", "auth.logout", "static"}


def test_token_routes_are_only_the_digest_links(appliance: Appliance) -> None:
    """Reached without a login, the signed token in the request being the credential."""
    with_token = {rule.rule: rule.endpoint for rule in all_rules(appliance.app)
                  if access.rule_of(appliance.app.view_functions[rule.endpoint])
                  == access.PUBLIC_WITH_TOKEN}
    assert with_token == {"/blockreport/link": "blockreport.link"}


def _protected(appliance: Appliance, method: str) -> list[Rule]:
    return [r for r in rules_with(appliance, method)
            if access.rule_of(appliance.app.view_functions[r.endpoint]) not in access.NO_LOGIN]


def test_every_protected_page_redirects_to_login(appliance: Appliance, anonymous: Any) -> None:
    rules = _protected(appliance, "GET")
    assert len(rules) >= 15
    for rule in rules:
        response = anonymous.get(url_of(rule))
        assert response.status_code == 302, rule.rule
        assert response.headers["Location"].startswith("/login"), rule.rule


def test_every_protected_post_needs_a_login_and_changes_nothing(
    appliance: Appliance, anonymous: Any
) -> None:
    rules = _protected(appliance, "POST")
    assert len(rules) >= 12
    audit_before = appliance.storage.audit.count()
    for rule in rules:
        response = anonymous.post(url_of(rule), {"value": "x@example.org", "role": "admin",
                                                 "folder": "spam", "txid": "0123abcd"})
        assert response.status_code == 302, rule.rule
        assert response.headers["Location"].startswith("/login"), rule.rule
    assert appliance.storage.lists.count("whitelist") == 0
    assert appliance.storage.audit.count() == audit_before
    assert not appliance.overrides_path.exists()


def test_every_post_without_csrf_token_is_refused(appliance: Appliance, admin: Any) -> None:
    rules = rules_with(appliance, "POST")
    assert len(rules) >= 14
    audit_before = appliance.storage.audit.count()
    for rule in rules:
        response = admin.post(url_of(rule), {"value": "x@example.org"}, csrf=False)
        assert response.status_code == 400, rule.rule
        assert b"Form expired" in response.data, rule.rule
    assert appliance.storage.lists.count("whitelist") == 0
    assert appliance.storage.audit.count() == audit_before


def test_a_forged_csrf_token_is_refused(appliance: Appliance, admin: Any) -> None:
    response = admin.post("/lists/whitelist/add", {"value": "x@example.org",
                                                   "csrf_token": "forged"})
    assert response.status_code == 400
    assert appliance.storage.lists.count("whitelist") == 0


def test_a_post_from_another_site_is_refused(appliance: Appliance, admin: Any) -> None:
    response = admin.post("/lists/whitelist/add", {"value": "x@example.org"},
                          headers={"Referer": "https://evil.example/"})
    assert response.status_code == 400
    assert appliance.storage.lists.count("whitelist") == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_admin_routes_refuse_operators(appliance: Appliance, operator: Any, method: str) -> None:
    rules = rules_with(appliance, method, access.ADMIN)
    assert rules, f"no admin-only {method} routes"
    audit_before = appliance.storage.audit.count()
    for rule in rules:
        if method == "GET":
            response = operator.get(url_of(rule))
        else:
            response = operator.post(url_of(rule), {"role": "admin", "username": "x",
                                                    "scoring.thresholds.tag": "1"})
        assert response.status_code == 403, rule.rule
    assert appliance.storage.users.get("oper").role == "operator"
    assert appliance.storage.audit.count() == audit_before
    assert not appliance.overrides_path.exists()


def test_operator_pages(operator: Any) -> None:
    for url in ("/", "/log", "/quarantine", "/lists/whitelist", "/analyzer", "/connections",
                "/config/general"):
        assert operator.get(url).status_code == 200, url
    page = operator.get("/").get_data(as_text=True)
    assert 'href="/users"' not in page and 'href="/audit"' not in page


def test_security_headers_and_cookie_flags(anonymous: Any) -> None:
    response = anonymous.get("/login")
    headers = response.headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("__Host-postwall=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
