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


# -- lists ---------------------------------------------------------------------------------


def add_form(client: UIClient, name: str = "whitelist") -> dict[str, str]:
    return load_form(client, f"/lists/{name}", f"/lists/{name}/add")


def test_adding_an_entry_someone_just_added_is_refused(appliance: Appliance,
                                                       admin: UIClient) -> None:
    bob = second_admin(appliance)
    mine, theirs = add_form(admin), add_form(bob)
    assert "loaded_at" in mine
    mine.update(value="x@partner.example", comment="admin's reason", days="30")
    assert admin.post("/lists/whitelist/add", mine).status_code == 302
    theirs.update(value="X@Partner.example", comment="bob's reason")
    response = bob.post("/lists/whitelist/add", theirs)
    assert response.status_code == 409
    page = text(response)
    assert re.search(r"<code>x@partner.example</code></td><td>\(not on the list\)</td>"
                     r"<td>expires [^<]*; admin's reason</td><td>admin at \d{4}-", page), page
    entry = appliance.storage.lists.get("whitelist", "x@partner.example")
    assert entry.comment == "admin's reason" and entry.expires_at is not None


def test_different_entries_added_at_once_merge(appliance: Appliance, admin: UIClient) -> None:
    bob = second_admin(appliance)
    mine, theirs = add_form(admin), add_form(bob)
    mine["value"] = "a@partner.example"
    theirs["value"] = "b@partner.example"
    assert admin.post("/lists/whitelist/add", mine).status_code == 302
    assert bob.post("/lists/whitelist/add", theirs).status_code == 302
    values = [e.value for e in appliance.storage.lists.entries("whitelist")]
    assert values == ["a@partner.example", "b@partner.example"]


def test_removing_an_entry_changed_or_removed_meanwhile_is_refused(
        appliance: Appliance, admin: UIClient) -> None:
    lists = appliance.storage.lists
    lists.add("blacklist", "@spam.example", comment="old", source="ui")
    lists.add("blacklist", "@junk.example", source="ui")
    bob = second_admin(appliance)
    remove = load_form(admin, "/lists/blacklist", "/lists/blacklist/remove")
    assert "loaded_at" in remove
    # bob changes one entry and removes the other from his own page
    theirs = add_form(bob, "blacklist")
    theirs.update(value="@spam.example", comment="still spamming")
    assert bob.post("/lists/blacklist/add", theirs).status_code == 302
    assert bob.post("/lists/blacklist/remove", {"value": "@junk.example", **{
        k: v for k, v in theirs.items() if k in ("loaded_at", "csrf_token")}}).status_code == 302

    response = admin.post("/lists/blacklist/remove", {**remove, "value": "@spam.example"})
    assert response.status_code == 409
    assert "still spamming" in text(response) and "bob at" in text(response)
    assert lists.get("blacklist", "@spam.example") is not None
    response = admin.post("/lists/blacklist/remove", {**remove, "value": "@junk.example"})
    assert response.status_code == 409
    assert re.search(r"<td>on the list</td><td>removed</td><td>bob at \d{4}-", text(response))


def test_import_with_one_conflicting_value_imports_nothing(appliance: Appliance,
                                                           admin: UIClient) -> None:
    bob = second_admin(appliance)
    form = load_form(admin, "/lists/ip_deny", "/lists/ip_deny/import")
    theirs = add_form(bob, "ip_deny")
    theirs["value"] = "198.51.100.0/24"
    assert bob.post("/lists/ip_deny/add", theirs).status_code == 302
    form["import-text"] = "192.0.2.0/24\n198.51.100.0/24 # from the old firewall\n"
    response = admin.post("/lists/ip_deny/import", form)
    assert response.status_code == 409
    assert "198.51.100.0/24" in text(response)
    assert [e.value for e in appliance.storage.lists.entries("ip_deny")] == ["198.51.100.0/24"]


def test_entries_from_files_are_shown_read_only_with_their_file(
        tmp_path: Any, appliance: Appliance, admin: UIClient) -> None:
    from tests.webui.conftest import write_config

    white = tmp_path / "white.txt"
    white.write_text("# partners\n@partner.example\nbroken entry here\n")
    write_config(appliance.config_path, appliance.data_dir, {"filters": {"address_lists": {
        "whitelist": [f"file:{white}", "boss@example.com"]}}})
    page = text(admin.get("/lists/whitelist"))
    assert f"From the file <code>{white}</code> (read-only: edit the file)" in page
    assert f"<code>@partner.example</code></td><td>{white}:2</td>" in page
    assert "goes to the database part of the list" in page
    assert "<li><code>boss@example.com</code></li>" in page
    white.chmod(0o666)
    white.write_text("@other.example\n")
    import os
    import time as _time
    past = _time.time() - 10
    os.utime(white, (past, past))
    page = text(admin.get("/lists/whitelist"))
    assert "writable by every user" in page and "last good contents" in page
    assert f"<code>@partner.example</code></td><td>{white}:2</td>" in page
