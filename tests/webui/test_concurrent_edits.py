"""Two administrators at once: a save made from a page that is out of date is refused
(409) with what the other one changed, who and when; nothing is overwritten. Changes
elsewhere (another settings section, other list entries) merge."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

import yaml

from tests.support.webui import ADMIN_PASSWORD, UIClient, create_user
from tests.webui.conftest import Appliance


class FormReader(HTMLParser):
    """The fields a browser would submit from the form posting to `action`."""

    def __init__(self, action: str) -> None:
        super().__init__(convert_charrefs=True)
        self.action = action
        self.inside = False
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action
        if not self.inside or "disabled" in a:
            return
        name = a.get("name")
        if tag == "input" and name:
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.fields[name] = "on"
            else:
                self.fields[name] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.fields[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.fields[self._select] = a.get("value", "")

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.fields[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None


def load_form(client: UIClient, page: str, action: str) -> dict[str, str]:
    response = client.get(page)
    assert response.status_code == 200
    reader = FormReader(action)
    reader.feed(response.get_data(as_text=True))
    assert reader.fields, f"no form posting to {action} on {page}"
    return reader.fields


def second_admin(appliance: Appliance) -> UIClient:
    create_user(appliance.storage, "bob", ADMIN_PASSWORD, "admin")
    client = appliance.client()
    assert client.login("bob", ADMIN_PASSWORD).status_code == 302
    return client


def overrides(appliance: Appliance) -> dict[str, Any]:
    if not appliance.overrides_path.exists():
        return {}
    return yaml.safe_load(appliance.overrides_path.read_text()) or {}


def text(response: Any) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.get_data(as_text=True)))


# -- settings ------------------------------------------------------------------------------


def test_second_save_of_the_same_settings_is_refused_with_the_difference(
        appliance: Appliance, admin: UIClient) -> None:
    bob = second_admin(appliance)
    mine = load_form(admin, "/config/limits", "/config/limits")
    theirs = load_form(bob, "/config/limits", "/config/limits")
    assert mine["config_version"] == theirs["config_version"]

    mine["limits.max_recipients"] = "50"
    assert admin.post("/config/limits", mine).status_code == 302
    theirs["limits.max_recipients"] = "70"
    theirs["limits.max_connections"] = "900"  # another field bob changed on the same page
    response = bob.post("/config/limits", theirs)

    assert response.status_code == 409
    page = text(response)
    assert "Not saved: changed by someone else." in page
    row = re.search(r"<tr><td><code>limits.max_recipients</code></td>(.*?)</tr>", page)
    assert row is not None, page
    assert re.search(r"<code>100</code></td><td><code>50</code></td><td>admin at \d{4}-", row[1])
    assert "<code>70</code>" in row[1]
    assert "<code>limits.max_connections</code>" in page  # bob's other unsaved change
    assert overrides(appliance) == {"limits": {"max_recipients": 50}}
    assert [e.username for e in appliance.storage.audit.search(action="config.")] == ["admin"]
    # The conflict page shows the current values with the current version: redo, apply.
    again = load_form(bob, "/config/limits", "/config/limits")
    assert again["limits.max_recipients"] == "50"
    again["limits.max_recipients"] = "70"
    assert bob.post("/config/limits", again).status_code == 302
    assert overrides(appliance) == {"limits": {"max_recipients": 70}}


def test_changes_to_another_section_merge(appliance: Appliance, admin: UIClient) -> None:
    bob = second_admin(appliance)
    limits = load_form(admin, "/config/limits", "/config/limits")
    smtp = load_form(bob, "/config/smtp", "/config/smtp")
    smtp["smtp.banner"] = "ESMTP bob's"
    assert bob.post("/config/smtp", smtp).status_code == 302
    limits["limits.max_recipients"] = "60"
    assert admin.post("/config/limits", limits).status_code == 302
    assert overrides(appliance) == {"limits": {"max_recipients": 60},
                                    "smtp": {"banner": "ESMTP bob's"}}


def test_a_hand_edit_of_the_overrides_file_is_a_conflict_too(
        appliance: Appliance, admin: UIClient) -> None:
    form = load_form(admin, "/config/limits", "/config/limits")
    appliance.overrides_path.write_text("limits:\n  max_recipients: 42\n")
    form["limits.max_recipients"] = "50"
    response = admin.post("/config/limits", form)
    assert response.status_code == 409
    assert "outside the web UI" in text(response)
    assert overrides(appliance) == {"limits": {"max_recipients": 42}}


def test_reset_from_an_out_of_date_page_is_refused(appliance: Appliance,
                                                  admin: UIClient) -> None:
    bob = second_admin(appliance)
    form = load_form(admin, "/config/limits", "/config/limits")
    form["limits.max_recipients"] = "50"
    assert admin.post("/config/limits", form).status_code == 302
    reset = load_form(bob, "/config/limits", "/config/reset")
    form = load_form(admin, "/config/limits", "/config/limits")
    form["limits.max_recipients"] = "55"
    assert admin.post("/config/limits", form).status_code == 302
    response = bob.post("/config/reset", {**reset, "path": "limits.max_recipients"})
    assert response.status_code == 409
    assert overrides(appliance) == {"limits": {"max_recipients": 55}}


def test_unknown_or_forged_version_is_refused_not_trusted(appliance: Appliance,
                                                         admin: UIClient) -> None:
    form = load_form(admin, "/config/limits", "/config/limits")
    for version in ("0" * 32, "../../etc/passwd"):
        response = admin.post("/config/limits", {**form, "config_version": version,
                                                 "limits.max_recipients": "50"})
        assert response.status_code == 409
        assert "no longer known" in text(response)
    assert overrides(appliance) == {}
