"""The configuration page: every schema setting shown with its help text and source;
changes validated as the proxy will load them, written to the overrides file, audited;
bad input is an inline error and nothing is written."""

from __future__ import annotations

import html
import re

import yaml

from appliance.config import loader
from tests.support.webui import UIClient
from tests.webui.conftest import Appliance
from webui import settings_form as sf


def overrides(appliance: Appliance) -> dict:
    if not appliance.overrides_path.exists():
        return {}
    return yaml.safe_load(appliance.overrides_path.read_text()) or {}


def test_every_setting_of_the_schema_is_on_a_page_with_its_help(admin: UIClient) -> None:
    seen = 0
    for section in sf.sections():
        page = html.unescape(admin.get(f"/config/{section.key}").get_data(as_text=True))
        for field in section.fields:
            assert f'name="{field.path}"' in page, field.path
            assert field.description in page, field.path
            seen += 1
    assert seen >= 80


def test_inputs_follow_the_type(admin: UIClient) -> None:
    page = admin.get("/config/scoring.thresholds").get_data(as_text=True)
    assert 'type="number" id="scoring.thresholds.tag" name="scoring.thresholds.tag" value="5"' \
        in page
    page = admin.get("/config/filters.regex").get_data(as_text=True)
    assert '<select id="filters.regex.mode"' in page
    assert '<textarea class="code" id="filters.regex.bomb_re"' in page
    page = admin.get("/config/general").get_data(as_text=True)
    assert 'type="checkbox" id="test_mode"' in page
    assert '<textarea id="local_domains" name="local_domains"' in page


def test_apply_writes_only_the_change_and_shows_its_source(appliance: Appliance,
                                                           admin: UIClient) -> None:
    page = admin.get("/config/scoring.thresholds").get_data(as_text=True)
    assert 'source-base' in page  # the thresholds come from the base file
    response = admin.post("/config/scoring.thresholds", {
        "scoring.thresholds.tag": "3.5", "scoring.thresholds.quarantine": "8",
        "scoring.thresholds.discard": "", "scoring.thresholds.reject": "12",
    })
    assert response.status_code == 302
    assert overrides(appliance) == {"scoring": {"thresholds": {"tag": 3.5}}}
    loaded = loader.load(appliance.config_path)
    assert loaded.config.scoring.thresholds.tag == 3.5
    assert loaded.source_of("scoring.thresholds.tag") == "override"
    page = admin.get("/config/scoring.thresholds").get_data(as_text=True)
    assert "Saved scoring.thresholds.tag." in page
    assert "The proxy was not reloaded" in page  # no proxy runs in this test
    assert 'value="3.5"' in page and "source-override" in page and "reset to base" in page
    [entry] = appliance.storage.audit.search(action="config.")
    assert (entry.username, entry.target, entry.old_value, entry.new_value) == (
        "admin", "scoring.thresholds.tag", "5", "3.5")


def test_setting_the_base_value_again_removes_the_override(appliance: Appliance,
                                                           admin: UIClient) -> None:
    admin.post("/config/limits", {"limits.max_recipients": "50"})
    assert overrides(appliance) == {"limits": {"max_recipients": 50}}
    admin.post("/config/limits", {"limits.max_recipients": "100"})
    assert overrides(appliance) == {}


def test_reset_to_base(appliance: Appliance, admin: UIClient) -> None:
    admin.post("/config/scoring.thresholds", {"scoring.thresholds.tag": "4"})
    admin.post("/config/smtp", {"smtp.banner": "ESMTP ours"})
    response = admin.post("/config/reset", {"path": "scoring.thresholds.tag",
                                            "section": "scoring.thresholds"})
    assert response.status_code == 302
    assert overrides(appliance) == {"smtp": {"banner": "ESMTP ours"}}
    assert loader.load(appliance.config_path).config.scoring.thresholds.tag == 5
    entry = appliance.storage.audit.search(action="config.reset")[0]
    assert (entry.target, entry.old_value, entry.new_value) == ("scoring.thresholds.tag", "4",
                                                                "5")


def test_booleans_lists_and_yaml(appliance: Appliance, admin: UIClient) -> None:
    admin.post("/config/general", {"test_mode._present": "1", "test_mode": "on",
                                   "local_domains": "example.com\n\nexample.net\n"})
    admin.post("/config/filters.regex", {
        "filters.regex.bomb_re": "- pattern: viagra\n  weight: 2\n"})
    config = loader.load(appliance.config_path).config
    assert config.test_mode is True
    assert config.local_domains == ["example.com", "example.net"]
    assert [(p.pattern, p.weight) for p in config.filters.regex.bomb_re] == [("viagra", 2.0)]
    admin.post("/config/general", {"test_mode._present": "1"})  # unchecked box
    assert loader.load(appliance.config_path).config.test_mode is False


def assert_refused(appliance: Appliance, admin: UIClient, section: str, form: dict,
                   message: str) -> str:
    before = appliance.overrides_path.read_bytes() if appliance.overrides_path.exists() else None
    audit = appliance.storage.audit.count()
    response = admin.post(f"/config/{section}", form)
    page = response.get_data(as_text=True)
    assert response.status_code == 400, page
    assert message in html.unescape(page), page
    after = appliance.overrides_path.read_bytes() if appliance.overrides_path.exists() else None
    assert after == before
    assert appliance.storage.audit.count() == audit
    return page


def test_bad_values_are_inline_errors_and_nothing_is_written(appliance: Appliance,
                                                              admin: UIClient) -> None:
    page = assert_refused(appliance, admin, "limits", {"limits.max_recipients": "many"},
                          "must be a whole number")
    assert 'value="many"' in page  # what was typed stays in the field
    assert_refused(appliance, admin, "limits", {"limits.max_recipients": "0"},
                   "greater than or equal to 1")
    assert_refused(appliance, admin, "downstream", {"downstream.port": ""},
                   "a value is required")
    assert_refused(appliance, admin, "smtp", {"smtp.bare_line_ends": "sometimes"},
                   "choose one of: normalize, reject")
    assert_refused(appliance, admin, "general", {"local_domains": "exa mple.com"},
                   "invalid domain name")
    assert_refused(appliance, admin, "filters.regex", {"filters.regex.bomb_re": "- [unclosed"},
                   "invalid YAML")
    assert_refused(appliance, admin, "filters.regex",
                   {"filters.regex.bomb_re": "- pattern: '(unclosed'\n"},
                   "invalid regular expression")
    assert_refused(appliance, admin, "scoring", {"scoring.reject_reply": "250 fine"},
                   "must look like '550 5.7.1 text'")


def test_thresholds_out_of_order_are_refused_as_a_whole(appliance: Appliance,
                                                         admin: UIClient) -> None:
    assert_refused(appliance, admin, "scoring.thresholds", {"scoring.thresholds.tag": "9"},
                   "thresholds must not decrease")


def test_a_base_value_that_allows_a_change_is_respected(appliance: Appliance,
                                                        admin: UIClient) -> None:
    # quarantine=8 comes from the base file: tag=7.5 is in order with it.
    assert admin.post("/config/scoring.thresholds",
                      {"scoring.thresholds.tag": "7.5"}).status_code == 302
    assert overrides(appliance) == {"scoring": {"thresholds": {"tag": 7.5}}}


def test_keys_of_the_base_file_cannot_be_removed_silently(appliance: Appliance,
                                                          admin: UIClient) -> None:
    base = yaml.safe_load(appliance.config_path.read_text())
    base["scoring"]["weights"] = {"BLACKLISTED": 20}
    appliance.config_path.write_text(yaml.safe_dump(base))
    assert_refused(appliance, admin, "scoring", {"scoring.weights": "SIZE: 1"},
                   "cannot remove entries the base file sets here")


def test_an_invalid_extension_pattern_is_refused_inline(appliance: Appliance,
                                                      admin: UIClient) -> None:
    assert_refused(appliance, admin, "filters.attachments",
                   {"filters.attachments.bad_attach_l1": "exe|("}, "missing ), unterminated")


def test_operators_see_the_configuration_read_only(appliance: Appliance,
                                                   operator: UIClient) -> None:
    page = operator.get("/config/scoring.thresholds").get_data(as_text=True)
    assert "Read-only: your role may look" in page
    assert re.search(r'name="scoring.thresholds.tag"[^>]*disabled', page)
    assert ">Apply<" not in page
    assert operator.post("/config/scoring.thresholds",
                         {"scoring.thresholds.tag": "1"}).status_code == 403
    assert not appliance.overrides_path.exists()


def test_the_web_ui_and_data_dir_settings_are_read_only(appliance: Appliance,
                                                        admin: UIClient) -> None:
    page = admin.get("/config/webui").get_data(as_text=True)
    assert "can only be changed in the base file" in page
    assert admin.post("/config/webui", {"webui.listen": "0.0.0.0:1"}).status_code == 404
    admin.post("/config/general", {"data_dir": "/elsewhere", "test_mode._present": "1"})
    assert "data_dir" not in overrides(appliance)
    assert admin.post("/config/reset", {"path": "data_dir"}).status_code == 404
    assert admin.get("/config/nonsense").status_code == 404


def test_unknown_form_fields_are_ignored(appliance: Appliance, admin: UIClient) -> None:
    admin.post("/config/limits", {"limits.max_recipients": "60", "limits.bogus": "1",
                                  "test_mode": "on"})
    assert overrides(appliance) == {"limits": {"max_recipients": 60}}


def test_plan_change_maps_errors_to_fields() -> None:
    fields = list(sf.section("filters.regex").fields)
    plan = sf.plan_change({}, {}, {"filters.regex.bomb_re": [{"pattern": "a", "weight": "x"}]},
                          fields)
    assert set(plan.errors) == {"filters.regex.bomb_re"}
    assert plan.config is None


def test_a_broken_base_file_keeps_the_last_valid_configuration(appliance: Appliance,
                                                               admin: UIClient) -> None:
    good = appliance.config_path.read_text()
    appliance.config_path.write_text(good + "limits: {max_recipients: lots}\n")
    response = admin.get("/config/limits")
    page = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 200
    assert "The configuration files are invalid" in page
    assert "limits.max_recipients: Input should be a valid integer" in page
    assert 'name="limits.max_recipients" value="100"' in page  # the last valid value
    appliance.config_path.write_text(good)
    assert "The configuration files are invalid" not in admin.get("/config/limits").get_data(
        as_text=True)
