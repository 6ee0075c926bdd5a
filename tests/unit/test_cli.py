"""The `postwall` command line, run in-process with real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main

SPAM = (
    b"From: shop@pills.example\r\nTo: bob@example.com\r\nSubject: you are a WINNER\r\n"
    b"Message-ID: <1@pills.example>\r\n\r\ncheap pills, cheap pills\r\n"
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "postwall.yml"
    path.write_text(f"""
local_domains: [example.com]
data_dir: {tmp_path / 'data'}
filters:
  regex:
    bomb_re: [{{pattern: 'cheap\\s+pills', weight: 2}}]
    bomb_subject_re: [{{pattern: winner, weight: 2}}]
  address_lists:
    blacklist: ['@blocked.example']
""")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_check_config_prints_the_resolved_pipeline(config_file):
    code, output = run("check-config", "--config", str(config_file))
    assert code == 0, output
    assert "configuration OK" in output
    assert "address_lists (mail, block" in output
    assert "BOMB_RE" in output and "thresholds: tag=5.0" in output


def test_check_config_names_the_bad_key_and_fails(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("limits: {max_recipients: -1}\nlisten: {inbund: '0.0.0.0:25'}\n")
    code, output = run("check-config", "--config", str(bad))
    assert code == 2
    assert "limits.max_recipients" in output and "listen.inbund: unknown setting" in output


def test_check_config_refuses_weights_for_unknown_symbols(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("scoring: {weights: {NO_SUCH_SYMBOL: 3}}\n")
    code, output = run("check-config", "--config", str(bad))
    assert code == 2 and "NO_SUCH_SYMBOL" in output


def test_missing_config_file_is_a_clear_error(tmp_path):
    code, output = run("check-config", "--config", str(tmp_path / "nope.yml"))
    assert code != 0 and "no such configuration file" in output


def test_analyze_explains_every_symbol_and_the_action(config_file, tmp_path):
    message = tmp_path / "spam.eml"
    message.write_bytes(SPAM)
    code, output = run("analyze", "--config", str(config_file), str(message),
                       "--ip", "203.0.113.5", "--helo", "mx.pills.example")
    assert code == 0, output
    assert "from=<shop@pills.example>" in output and "to=bob@example.com" in output
    assert "BOMB_RE" in output and "BOMB_SUBJECT" in output
    assert "total: 12" in output
    assert "action: reject" in output and "reply: 550 5.7.1" in output


def test_analyze_stops_where_the_dialogue_would(config_file, tmp_path):
    message = tmp_path / "spam.eml"
    message.write_bytes(SPAM)
    code, output = run("analyze", "--config", str(config_file), str(message),
                       "--from", "x@blocked.example")
    assert code == 0, output
    assert "mail     BLACKLISTED" in output
    assert "BOMB_RE" not in output
    assert "action: reject" in output


def test_analyze_rejects_a_bad_ip(config_file, tmp_path):
    message = tmp_path / "m.eml"
    message.write_bytes(SPAM)
    code, output = run("analyze", "--config", str(config_file), str(message), "--ip", "1.2.3")
    assert code == 2 and "--ip" in output


def test_lists_add_show_remove(config_file):
    code, output = run("lists", "add", "--config", str(config_file), "whitelist",
                       "Friend@Partner.example", "--days", "30", "--comment", "vendor")
    assert code == 0 and "added friend@partner.example" in output
    code, output = run("lists", "show", "--config", str(config_file), "whitelist")
    assert "friend@partner.example" in output and "# vendor" in output
    code, output = run("lists", "add", "--config", str(config_file), "ip_deny", "10.0.0.0/33")
    assert code == 1 and "10.0.0.0/33" in output
    code, output = run("lists", "remove", "--config", str(config_file), "whitelist",
                       "friend@partner.example", "ghost@partner.example")
    assert code == 1 and "removed friend@partner.example" in output
    assert "not found: ghost@partner.example" in output
