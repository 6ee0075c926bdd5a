"""Configuration: schema validation with key paths, base + overrides merge, provenance."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.config import loader
from appliance.config.schema import Config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_keys():
    config = Config()
    assert config.listen.inbound == "0.0.0.0:25"
    assert config.listen.relay == "0.0.0.0:225"
    assert config.relay_networks == ["10.0.0.0/8"]
    assert (config.downstream.host, config.downstream.port) == ("127.0.0.1", 125)
    assert config.limits.max_message_size == 20971520
    assert config.test_mode is False


def test_the_issue_example_validates(tmp_path):
    base = write(tmp_path / "postwall.yml", """
listen:
  inbound: "0.0.0.0:25"
  relay: "0.0.0.0:225"
relay_networks: ["10.0.0.0/8"]
downstream: {host: 127.0.0.1, port: 125, timeout: 60}
local_domains: ["example.com"]
limits: {max_message_size: 20971520, max_recipients: 100, max_connections: 500,
         max_connections_per_ip: 20}
data_dir: %s
test_mode: false
""" % (tmp_path / "data"))
    loaded = loader.load(base)
    assert loaded.config.local_domains == ["example.com"]
    assert loaded.source_of("limits.max_recipients") == "base"
    assert loaded.source_of("limits.idle_timeout") == "default"


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {max_recipientz: 3}", "limits.max_recipientz: unknown setting"),
    ("listen: {inbound: 'nowhere'}", "listen.inbound"),
    ("listen: {inbound: 'example.com:25'}", "listen.inbound"),
    ("relay_networks: ['10.0.0.0/33']", "relay_networks: '10.0.0.0/33' does not appear"),
    ("local_domains: ['exa mple.com']", "local_domains"),
    ("downstream: {port: 70000}", "downstream.port"),
    ("scoring: {thresholds: {tag: 9, reject: 3}}", "thresholds must not decrease"),
    ("scoring: {reject_reply: '250 ok'}", "scoring.reject_reply"),
    ("filters: {regex: {bomb_re: [{pattern: '(unclosed'}]}}", "invalid regular expression"),
    ("tls: {cert_file: /x.pem}", "must be set together"),
])
def test_invalid_settings_name_their_key_path(tmp_path, text, message):
    base = write(tmp_path / "bad.yml", text)
    with pytest.raises(loader.ConfigError) as error:
        loader.load(base)
    assert message in str(error.value)
    assert str(base) in str(error.value)


@pytest.mark.parametrize("text", ["- a list\n", "key: [unclosed\n"])
def test_unreadable_documents_are_clear_errors(tmp_path, text):
    with pytest.raises(loader.ConfigError, match=r"bad\.yml"):
        loader.load(write(tmp_path / "bad.yml", text))


def test_overrides_merge_on_top_with_provenance(tmp_path):
    data = tmp_path / "data"
    base = write(tmp_path / "postwall.yml", f"""
data_dir: {data}
local_domains: [example.com]
scoring: {{thresholds: {{tag: 4, reject: 10}}}}
""")
    loader.write_overrides(data / loader.OVERRIDES_NAME, {"scoring": {"thresholds": {"tag": 6}}})
    loaded = loader.load(base)
    assert loaded.config.scoring.thresholds.tag == 6
    assert loaded.config.scoring.thresholds.reject == 10
    assert loaded.source_of("scoring.thresholds.tag") == "override"
    assert loaded.source_of("scoring.thresholds.reject") == "base"
    mode = stat.S_IMODE(os.stat(data / loader.OVERRIDES_NAME).st_mode)
    assert mode == 0o640


def test_overrides_cannot_move_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    base = write(tmp_path / "postwall.yml", f"data_dir: {data}\n")
    write(data / loader.OVERRIDES_NAME, f"data_dir: {tmp_path}\n")
    with pytest.raises(loader.ConfigError, match="data_dir can only be set in the base file"):
        loader.load(base)


def test_invalid_overrides_are_refused_and_the_old_file_stays(tmp_path):
    target = tmp_path / loader.OVERRIDES_NAME
    loader.write_overrides(target, {"test_mode": True})
    with pytest.raises(loader.ConfigError):
        loader.write_overrides(target, {"limits": {"max_recipients": "many"}})
    assert "test_mode: true" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [loader.OVERRIDES_NAME]


def test_deep_merge_replaces_lists_and_merges_mappings():
    merged = loader.deep_merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}, "d": 4})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 4}
