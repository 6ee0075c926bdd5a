"""The read-only DKIM page: records of every selector, admin only."""

from __future__ import annotations

import html

from appliance import dkim_keys
from tests.support.webui import UIClient
from tests.webui.conftest import Appliance


def test_admin_sees_every_selector_and_its_record(appliance: Appliance, admin: UIClient) -> None:
    assert "No DKIM key yet" in admin.get("/dkim").get_data(as_text=True)
    old = dkim_keys.generate(appliance.data_dir, "example.com", "s1")
    new = dkim_keys.rotate(appliance.data_dir, "example.com", "s2", algorithm="ed25519")
    page = html.unescape(admin.get("/dkim").get_data(as_text=True))
    assert new.zone_line() in page and old.zone_line() in page
    assert page.index("s2._domainkey") < page.index("s1._domainkey")
    assert "published, not signing" in page and "BEGIN RSA" not in page


def test_a_broken_key_is_shown_not_a_crash(appliance: Appliance, admin: UIClient) -> None:
    dkim_keys.generate(appliance.data_dir, "example.com", "s1")
    (appliance.data_dir / "dkim/example.com/s1.key").write_bytes(b"garbage")
    page = admin.get("/dkim")
    assert page.status_code == 200
    assert "neither an RSA PEM key" in page.get_data(as_text=True)


def test_operators_may_not_see_it(operator: UIClient) -> None:
    assert operator.get("/dkim").status_code == 403
