"""`postwall greylist|penalty` and the client checks in check-config and analyze."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.storage.facade import Storage
from appliance.storage.greylist import EventKind, GreylistEvent
from appliance.storage.penalty import PenaltyEvent

MESSAGE = b"From: a@partner.example\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "postwall.yml"
    path.write_text(f"""
local_domains: [example.com]
data_dir: {tmp_path / 'data'}
filters:
  greylist: {{mode: block, delay: 60}}
  penalty_box: {{tempfail_score: 10, reject_score: 20, half_life: 3600}}
""")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_check_config_lists_the_client_checks_in_pipeline_order(config_file):
    code, output = run("check-config", "--config", str(config_file))
    assert code == 0, output
    order = [output.index(f"{name} (") for name in
             ("ip_lists", "connection_rate", "penalty_box", "early_talker", "message_rate",
              "address_lists", "recipient_lists", "greylist")]
    assert order == sorted(order)
    assert ("early_talker (greeting, block, on_error=fail_open, greeting_delay=0: inactive)"
            in output)
    for symbol in ("GREYLISTED", "GREYLIST_PASSED", "PENALTY_BOX", "PENALTY_SCORE",
                   "CONNECTION_RATE", "MESSAGE_RATE", "EARLY_TALKER"):
        assert symbol in output


@pytest.mark.parametrize(("setting", "key"), [
    ("greylist: {delay: -5}", "filters.greylist.delay"),
    ("greylist: {pass_networks: ['192.0.2.0/33']}", "filters.greylist.pass_networks"),
    ("rate_limits: {exempt_networks: [example.com]}", "filters.rate_limits.exempt_networks"),
    ("penalty_box: {tempfail_score: 50, reject_score: 10}", "filters.penalty_box"),
])
def test_check_config_names_bad_client_check_settings(tmp_path, setting, key):
    bad = tmp_path / "bad.yml"
    bad.write_text(f"filters:\n  {setting}\n")
    code, output = run("check-config", "--config", str(bad))
    assert code == 2 and key in output, output


def test_penalty_show_and_clear(config_file, tmp_path):
    now = datetime.now(UTC)
    with Storage.open(tmp_path / "data") as storage:
        storage.penalty.add_many([
            PenaltyEvent("192.0.2.1", 25, "virus Eicar", now),
            PenaltyEvent("192.0.2.2", 12, "12 rejected recipient(s)", now),
            PenaltyEvent("2001:db8:1:2::/64", 3, "3 protocol error(s)", now),
        ], half_life=3600)
    code, output = run("penalty", "show", "--config", str(config_file))
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("tempfail at 10, reject at 20.0, half-life 3600s")
    assert [line.split("\t")[0] for line in lines[1:]] == [
        "192.0.2.1", "192.0.2.2", "2001:db8:1:2::/64"
    ]
    assert "rejected (554)" in lines[1] and "tempfailed (421)" in lines[2]
    assert "admitted" in lines[3]
    code, output = run("penalty", "show", "2001:db8:1:2::99", "--config", str(config_file))
    assert code == 0 and "2001:db8:1:2::/64\tscore=3.0" in output
    code, output = run("penalty", "clear", "192.0.2.1", "192.0.2.9", "--config",
                       str(config_file))
    assert code == 1 and "cleared 192.0.2.1" in output and "no score: 192.0.2.9" in output
    code, output = run("penalty", "show", "192.0.2.1", "--config", str(config_file))
    assert code == 1 and "no penalty score" in output
    code, output = run("penalty", "clear", "--all", "--config", str(config_file))
    assert code == 0 and "removed 2 client(s)" in output


@pytest.mark.parametrize("args", [
    ("penalty", "show", "300.1.1.1"),
    ("penalty", "clear", "not-an-ip"),
    ("penalty", "clear"),
    ("penalty", "clear", "192.0.2.1", "--all"),
    ("greylist", "clear"),
    ("greylist", "clear", "bogus"),
])
def test_bad_cli_input_is_refused_and_changes_nothing(config_file, tmp_path, args):
    now = datetime.now(UTC)
    with Storage.open(tmp_path / "data") as storage:
        storage.penalty.add_many([PenaltyEvent("192.0.2.1", 5, "x", now)], half_life=3600)
    code, output = run(*args, "--config", str(config_file))
    assert code == 2, output
    assert "Error" in output
    with Storage.open(tmp_path / "data") as storage:
        assert storage.penalty.count() == 1


def test_greylist_show_and_clear(config_file, tmp_path):
    now = datetime.now(UTC)
    with Storage.open(tmp_path / "data") as storage:
        storage.greylist.record_many([
            GreylistEvent(EventKind.ATTEMPT, "192.0.2.0/24", "a@x.example", "b@example.com",
                          now, now),
            GreylistEvent(EventKind.PASS, "198.51.100.0/24", "c@y.example", "d@example.com",
                          now, now),
        ])
    code, output = run("greylist", "show", "--config", str(config_file))
    assert code == 0, output
    assert "delayed: 1  passed: 1  client networks: 1  (greylisting is block)" in output
    assert "192.0.2.0/24\t<a@x.example> -> <b@example.com>" in output and "retry in" in output
    code, output = run("greylist", "show", "--passed", "--config", str(config_file))
    assert "198.51.100.0/24" in output and "192.0.2.0/24" not in output.split("\n", 1)[1]
    code, output = run("greylist", "clear", "192.0.2.77", "--config", str(config_file))
    assert code == 0 and "removed 1 triplet(s) of 192.0.2.0/24" in output
    code, output = run("greylist", "clear", "--all", "--config", str(config_file))
    assert code == 0 and "removed 1 triplet(s)" in output


def test_analyze_shows_what_greylisting_and_the_penalty_box_would_do(config_file, tmp_path):
    message = tmp_path / "m.eml"
    message.write_bytes(MESSAGE)
    with Storage.open(tmp_path / "data") as storage:
        storage.penalty.add_many([PenaltyEvent("203.0.113.5", 4, "x", datetime.now(UTC))],
                                 half_life=3600)
    args = ("analyze", str(message), "--ip", "203.0.113.5", "--config", str(config_file))
    for _ in range(2):  # a dry run: the second analysis is no retry
        code, output = run(*args)
        assert code == 0, output
        assert "PENALTY_SCORE" in output and "score 4.0 (tempfail at 10)" in output
        assert "GREYLISTED" in output and "tempfail" in output
    with Storage.open(tmp_path / "data") as storage:
        assert storage.greylist.counts()["delayed"] == 0
