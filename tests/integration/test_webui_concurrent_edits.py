"""Two administrators in two browser sessions against the real `postwall webui serve`
over HTTPS (cookies, CSRF tokens, Referer as a browser sends them): the second save of
the same settings and the second add of the same list entry get 409 with the other's
change; the overrides file and the list keep the first one's."""

from __future__ import annotations

import html
import http.cookiejar
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.webui import ADMIN_PASSWORD, WebUIProcess, create_user
from tests.webui.conftest import write_config
from tests.webui.test_concurrent_edits import FormReader


class Browser:
    """One session: its own cookie jar; forms are submitted with every field the page had."""

    def __init__(self, base: str) -> None:
        self.base = base
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the throwaway self-signed certificate
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def open(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Referer": self.base + "/"})
        try:
            with self.opener.open(request, timeout=20) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def form(self, page: str, action: str) -> dict[str, str]:
        status, body = self.open(page)
        assert status == 200, body[:500]
        reader = FormReader(action)
        reader.feed(body)
        return reader.fields

    def login(self, username: str) -> None:
        form = self.form("/login", "/login")
        assert "csrf_token" in form
        form.update(username=username, password=ADMIN_PASSWORD)
        status, body = self.open("/login", form)
        assert status == 200 and 'action="/login"' not in body, body[:2000]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[WebUIProcess, Path]]:
    from appliance.storage.facade import Storage

    config = tmp_path / "postwall.yml"
    data_dir = tmp_path / "data"
    write_config(config, data_dir)
    storage = Storage.open(data_dir)
    create_user(storage, "alice", ADMIN_PASSWORD, "admin")
    create_user(storage, "bob", ADMIN_PASSWORD, "admin")
    storage.close()
    process = WebUIProcess(config, tmp_path).start()
    yield process, data_dir
    process.stop()


def test_two_sessions_save_the_same_settings_and_list(server: tuple[WebUIProcess, Path]
                                                      ) -> None:
    process, data_dir = server
    base = f"https://127.0.0.1:{process.port}"
    alice, bob = Browser(base), Browser(base)
    alice.login("alice")
    bob.login("bob")

    mine = alice.form("/config/limits", "/config/limits")
    theirs = bob.form("/config/limits", "/config/limits")
    assert mine.get("config_version") and mine["config_version"] == theirs["config_version"]
    mine["limits.max_recipients"] = "50"
    status, body = alice.open("/config/limits", mine)
    assert status == 200 and "Saved limits.max_recipients." in html.unescape(body)
    theirs["limits.max_recipients"] = "70"
    status, body = bob.open("/config/limits", theirs)
    assert status == 409
    page = html.unescape(body)
    assert "Not saved: changed by someone else." in page
    assert re.search(r"<code>limits.max_recipients</code></td><td><code>100</code></td>"
                     r"<td><code>50</code></td><td>alice at \d{4}-", page), page
    overrides = yaml.safe_load((data_dir / "config-overrides.yml").read_text())
    assert overrides == {"limits": {"max_recipients": 50}}

    mine = alice.form("/lists/whitelist", "/lists/whitelist/add")
    theirs = bob.form("/lists/whitelist", "/lists/whitelist/add")
    mine.update(value="partner@example.org", comment="alice's")
    assert alice.open("/lists/whitelist/add", mine)[0] == 200
    theirs.update(value="partner@example.org", comment="bob's")
    status, body = bob.open("/lists/whitelist/add", theirs)
    assert status == 409 and "alice at" in body and "alice&#39;s" in body
    status, body = alice.open("/lists/whitelist")
    assert "alice&#39;s" in body and "bob&#39;s" not in body
