"""List files: the line parser, the safety rules, change detection and last-good contents,
and how `file:` entries reach the compiled lists and the regex filter."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from appliance.config import loader
from appliance.config.schema import Config
from appliance.listfiles import (
    FileBusy,
    Kind,
    ListFileError,
    ListFiles,
    parse_lines,
    read_file,
    split_refs,
)
from appliance.services import ListRegistry, config_entries, config_files, list_file_refs

OWNERS = frozenset({0, os.geteuid()})


def write(path: Path, text: str, *, age: float = 10.0) -> Path:
    """Write `text` and date it `age` seconds back (older than the settle time)."""
    path.write_text(text)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, text)
    os.replace(tmp, path)


# -- parser ----------------------------------------------------------------------------


def test_addresses_skip_comments_blank_lines_and_trailing_comments() -> None:
    parsed = parse_lines(
        "# partners\n\nBoss@Example.COM  # the boss\n@partner.example\n*.trusted.example\n"
        "/^news@/\n  \n@partner.example\n", Kind.ADDRESS)
    assert parsed.entries == ("boss@example.com", "@partner.example", "*.trusted.example",
                              "/^news@/")
    assert parsed.lines == (3, 4, 5, 6)
    assert parsed.errors == ()


def test_bad_address_lines_name_their_line_and_the_rest_applies() -> None:
    parsed = parse_lines("good@example.com\nno spaces@x y\n/(unclosed/\n*\nok.example\n",
                         Kind.ADDRESS)
    assert parsed.entries == ("good@example.com", "ok.example")
    assert [e.split(":")[0] for e in parsed.errors] == ["line 2", "line 3", "line 4"]
    assert "invalid regular expression" in parsed.errors[1]
    assert "every address" in parsed.errors[2]


def test_networks_are_normalised_and_bad_ones_reported() -> None:
    parsed = parse_lines("192.0.2.7\n198.51.100.0/24 # office\n10.0.0.300\n2001:db8::/32\n"
                         "banana\n", Kind.NETWORK)
    assert parsed.entries == ("192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32")
    assert len(parsed.errors) == 2
    assert parsed.errors[0].startswith("line 3: ") and "10.0.0.300" in parsed.errors[0]
    assert parsed.errors[1].startswith("line 5: ")


def test_patterns_take_weights_and_keep_hashes_inside_the_pattern() -> None:
    parsed = parse_lines("# comment\nviagra=>2.5\nfree\\s+money\ncolou?r #1\n(broken\n",
                         Kind.PATTERN)
    assert parsed.entries == ("viagra", "free\\s+money", "colou?r #1")
    assert parsed.weights == (2.5, 1.0, 1.0)
    assert len(parsed.errors) == 1 and parsed.errors[0].startswith("line 5: ")


def test_split_refs() -> None:
    assert split_refs(["a@b.example", "file:/etc/x.txt", " file: /etc/y.txt"]) == (
        ["a@b.example"], ["/etc/x.txt", "/etc/y.txt"])


# -- configuration ---------------------------------------------------------------------


def test_config_accepts_absolute_file_refs_in_every_list() -> None:
    config = Config.model_validate({"filters": {
        "address_lists": {"whitelist": ["file:/etc/postwall/white.txt", "a@b.example"]},
        "ip_lists": {"deny": ["file:/etc/postwall/deny.txt", "192.0.2.1"]},
        "regex": {"bomb_re": [{"pattern": "file:/etc/postwall/bomb.txt", "weight": 2}]},
    }})
    assert config_entries(config)["whitelist"] == ["a@b.example"]
    assert config_entries(config)["ip_deny"] == ["192.0.2.1/32"]
    assert config_files(config)["ip_deny"] == ["/etc/postwall/deny.txt"]
    assert list_file_refs(config) == {
        ("/etc/postwall/white.txt", Kind.ADDRESS), ("/etc/postwall/deny.txt", Kind.NETWORK),
        ("/etc/postwall/bomb.txt", Kind.PATTERN)}


@pytest.mark.parametrize("section", [
    {"address_lists": {"blacklist": ["file:lists/black.txt"]}},
    {"ip_lists": {"allow": ["file:allow.txt"]}},
    {"regex": {"red_re": [{"pattern": "file:red.txt"}]}},
    {"recipient_verify": {"valid_recipients": ["file:recipients.txt"]}},
])
def test_relative_file_refs_are_refused_with_a_clear_message(section: dict) -> None:
    with pytest.raises(loader.ConfigError, match="absolute path"):
        loader.validate({"filters": section}, "test.yml")


# -- reading, safety, change detection -------------------------------------------------


def test_world_writable_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "white.txt", "a@b.example\n")
    path.chmod(0o666)
    with pytest.raises(ListFileError, match="writable by every user"):
        read_file(str(path), Kind.ADDRESS, OWNERS)


def test_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "white.txt", "a@b.example\n")
    with pytest.raises(ListFileError, match="owned by uid"):
        read_file(str(path), Kind.ADDRESS, frozenset({12345}))


def test_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    path = write(folder / "white.txt", "a@b.example\n")
    folder.chmod(0o777)
    with pytest.raises(ListFileError, match="directory"):
        read_file(str(path), Kind.ADDRESS, OWNERS)
    folder.chmod(0o1777)  # sticky (like /tmp): others cannot replace our file
    assert read_file(str(path), Kind.ADDRESS, OWNERS).entries == ("a@b.example",)


def test_not_utf8_and_directories_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("m\xfcller@example.com\n".encode("latin-1"))
    with pytest.raises(ListFileError, match="UTF-8"):
        read_file(str(path), Kind.ADDRESS, OWNERS)
    with pytest.raises(ListFileError, match="not a regular file"):
        read_file(str(tmp_path), Kind.ADDRESS, OWNERS)


def test_a_file_written_moments_ago_waits_for_the_next_check(tmp_path: Path) -> None:
    path = write(tmp_path / "white.txt", "a@b.example\n", age=0)
    first = read_file(str(path), Kind.ADDRESS, OWNERS)  # startup: read at once
    with pytest.raises(FileBusy):
        read_file(str(path), Kind.ADDRESS, OWNERS, first.stamp, settle_seconds=5)


def test_refresh_sees_in_place_writes_and_renames(tmp_path: Path) -> None:
    path = write(tmp_path / "white.txt", "a@b.example\n")
    files = ListFiles(settle_seconds=1.0, owners=OWNERS)
    files.watch([(str(path), Kind.ADDRESS)])
    assert files.entries(str(path), Kind.ADDRESS) == ("a@b.example",)
    assert files.refresh() is False  # nothing changed: one stat, no read
    write(path, "a@b.example\nc@d.example\n")  # in place (same inode)
    assert files.refresh() is True
    assert files.entries(str(path), Kind.ADDRESS) == ("a@b.example", "c@d.example")
    generation = files.generation
    replace(path, "e@f.example\n")  # atomic rename: a new inode
    assert files.refresh() is True and files.generation == generation + 1
    assert files.entries(str(path), Kind.ADDRESS) == ("e@f.example",)
    replace(path, "e@f.example\n# just a comment now\n")  # same entries: no rebuild
    assert files.refresh() is False


def test_missing_or_unsafe_file_keeps_the_last_good_contents(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "black.txt", "spam@bad.example\n")
    files = ListFiles(settle_seconds=0, owners=OWNERS)
    files.watch([(str(path), Kind.ADDRESS)])
    caplog.set_level(logging.INFO, "postwall.listfiles")
    path.unlink()
    assert files.refresh() is False
    assert files.entries(str(path), Kind.ADDRESS) == ("spam@bad.example",)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping its last good contents (1 entries" in errors[0]
    files.refresh()  # the same problem is logged once, not at every tick
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    write(path, "other@bad.example\n").chmod(0o646)
    assert files.refresh() is False
    assert files.entries(str(path), Kind.ADDRESS) == ("spam@bad.example",)
    assert "writable by every user" in caplog.records[-1].getMessage()
    assert files.states()[0].problem is not None
    path.chmod(0o644)
    assert files.refresh() is True
    assert files.entries(str(path), Kind.ADDRESS) == ("other@bad.example",)
    assert files.states()[0].problem is None


def test_a_file_missing_at_start_adds_nothing_and_is_read_when_it_appears(
        tmp_path: Path) -> None:
    path = tmp_path / "later.txt"
    files = ListFiles(settle_seconds=0, owners=OWNERS)
    files.watch([(str(path), Kind.NETWORK)])
    assert files.entries(str(path), Kind.NETWORK) == ()
    assert "cannot read" in (files.states()[0].problem or "")
    write(path, "192.0.2.0/24\n")
    assert files.refresh() is True
    assert files.entries(str(path), Kind.NETWORK) == ("192.0.2.0/24",)


def test_bad_lines_are_logged_with_file_and_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "deny.txt", "192.0.2.1\nnot-an-ip\n198.51.100.0/24\n")
    caplog.set_level(logging.WARNING, "postwall.listfiles")
    files = ListFiles(owners=OWNERS)
    files.watch([(str(path), Kind.NETWORK)])
    assert files.entries(str(path), Kind.NETWORK) == ("192.0.2.1/32", "198.51.100.0/24")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"list file {path}:2: ") and "not-an-ip" in m for m in messages)


def test_registry_merges_config_file_and_database_entries(tmp_path: Path) -> None:
    white = write(tmp_path / "white.txt", "@partner.example\n")
    deny = write(tmp_path / "deny.txt", "203.0.113.0/24\n")
    config = Config.model_validate({"filters": {
        "address_lists": {"whitelist": [f"file:{white}", "boss@example.com"]},
        "ip_lists": {"deny": [f"file:{deny}"]}}})
    files = ListFiles(owners=OWNERS)
    files.watch(list_file_refs(config))
    lists = ListRegistry(config, {"whitelist": ["db@example.org"]}, files)
    assert lists.whitelist.match("x@partner.example") == "@partner.example"
    assert lists.whitelist.match("boss@example.com") == "boss@example.com"
    assert lists.whitelist.match("db@example.org") == "db@example.org"
    assert lists.ip_deny.match("203.0.113.9") is not None
    assert lists.whitelist.match("file:" + str(white)) is None  # the ref is no entry


async def test_regex_filter_uses_pattern_files_and_follows_their_changes(tmp_path: Path) -> None:
    import ipaddress
    from email.message import EmailMessage

    from appliance.context import ConnectionContext, Listener, TransactionContext
    from appliance.filters.regex import RegexFilter
    from appliance.services import Services

    path = write(tmp_path / "bomb.txt", "casino=>2\n(broken\n")
    config = Config.model_validate({"filters": {"regex": {"bomb_re": [
        {"pattern": f"file:{path}", "weight": 1.5}, {"pattern": "lottery"}]}}})
    files = ListFiles(settle_seconds=0, owners=OWNERS)
    files.watch(list_file_refs(config))
    services = Services(lists=ListRegistry(config, {}, files), list_files=files)
    flt = RegexFilter(config.filters.regex, config.scoring.weights, config, services)

    def tx(body: str) -> TransactionContext:
        msg = EmailMessage()
        msg["Subject"] = "hi"
        msg.set_content(body)
        conn = ConnectionContext(ipaddress.ip_address("203.0.113.9"), 4000, Listener.INBOUND)
        return TransactionContext(connection=conn, mail_from="s@example.net",
                                  content=msg.as_bytes())

    verdict = await flt.check(tx("win at the casino and the lottery"))
    assert sorted(s.score for s in verdict.symbols) == [3.0, 9.0]  # 3 x 1.5 x 2, 3 x 1
    replace(path, "pills\n")
    assert files.refresh() is True
    verdict = await flt.check(tx("win at the casino, buy pills"))
    assert [(s.score, "/pills/" in s.reason) for s in verdict.symbols] == [(4.5, True)]


def test_cli_lists_show_names_the_file_and_line_of_file_entries(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import main

    white = write(tmp_path / "white.txt", "# partners\n@partner.example\nbad entry\n")
    config = tmp_path / "postwall.yml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nfilters:\n  address_lists:\n"
                      f"    whitelist: ['file:{white}', boss@example.com]\n")
    runner = CliRunner()
    added = runner.invoke(main, ["lists", "add", "--config", str(config), "whitelist",
                                 "db@example.org"])
    assert added.exit_code == 0, added.output
    result = runner.invoke(main, ["lists", "show", "--config", str(config), "whitelist"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "db@example.org\texpires=never\tsource=ui" in lines
    assert "boss@example.com\texpires=never\tsource=config" in lines
    assert f"@partner.example\texpires=never\tsource=file:{white}:2" in lines
    white.unlink()
    result = runner.invoke(main, ["lists", "show", "--config", str(config), "whitelist"])
    assert "warning: cannot read" in result.output


# -- check-config and `postwall status` ------------------------------------------------


def _config_with_files(tmp_path: Path, white: list[str], deny: list[str]) -> Config:
    return Config.model_validate({"data_dir": str(tmp_path / "data"), "filters": {
        "address_lists": {"whitelist": [f"file:{p}" for p in white]},
        "ip_lists": {"deny": [f"file:{p}" for p in deny]},
    }})


def test_inspect_files_names_each_problem_and_logs_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from appliance.listfiles import inspect_files

    good = write(tmp_path / "white.txt", "@ok.example\nbad entry\nx@y.example\n")
    open_file = write(tmp_path / "deny.txt", "10.0.0.0/8\n")
    open_file.chmod(0o666)
    missing = tmp_path / "gone.txt"
    caplog.set_level(logging.DEBUG, "postwall.listfiles")
    states = {s.path: s for s in inspect_files([
        (str(good), Kind.ADDRESS), (str(open_file), Kind.NETWORK), (str(missing), Kind.ADDRESS)],
        OWNERS)}
    assert states[str(good)].problem is None and states[str(good)].entries == 2
    assert states[str(good)].bad_lines == 1 and states[str(good)].errors[0].startswith("line 2:")
    assert "writable by every user" in (states[str(open_file)].problem or "")
    assert "No such file" in (states[str(missing)].problem or "")
    assert caplog.records == []


def test_status_list_files_unknown_ok_warn_fail(tmp_path: Path) -> None:
    from appliance.status import State, check_list_files

    assert check_list_files(_config_with_files(tmp_path, [], [])).state is State.UNKNOWN
    white = write(tmp_path / "white.txt", "@ok.example\n")
    deny = write(tmp_path / "deny.txt", "10.0.0.0/8\n192.0.2.1\n")
    outcome = check_list_files(_config_with_files(tmp_path, [str(white)], [str(deny)]))
    assert (outcome.state, outcome.summary) == (State.OK, "2 list file(s), 3 entries")
    write(tmp_path / "deny.txt", "10.0.0.0/8\nnot-an-ip\n")
    outcome = check_list_files(_config_with_files(tmp_path, [str(white)], [str(deny)]))
    assert outcome.state is State.WARN
    assert f"1 bad line(s) skipped in {deny}" in outcome.summary
    assert "2: " in outcome.detail and "not-an-ip" in outcome.detail
    deny.chmod(0o666)
    outcome = check_list_files(_config_with_files(
        tmp_path, [str(white), str(tmp_path / "gone.txt")], [str(deny)]))
    assert outcome.state is State.FAIL
    assert outcome.summary.startswith("2 of 3 list file(s) unusable")
    assert "fix the path, owner or mode" in outcome.summary
    assert "gone.txt: cannot read" in outcome.detail and "chmod o-w" in outcome.detail


def _cli_config(tmp_path: Path, white: Path, deny: Path) -> Path:
    config = tmp_path / "postwall.yml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nfilters:\n  address_lists:\n"
                      f"    whitelist: ['file:{white}']\n  ip_lists:\n"
                      f"    deny: ['file:{deny}']\n")
    return config


def test_cli_check_config_reports_list_file_problems(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import main

    white = write(tmp_path / "white.txt", "# partners\n@partner.example\nbad entry\n")
    deny = write(tmp_path / "deny.txt", "10.0.0.0/8\n")
    config = _cli_config(tmp_path, white, deny)
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output + result.stderr
    assert f"  {white} (address): 1 entries, 1 bad line(s) skipped" in result.stdout
    assert f"  {deny} (network): 1 entries" in result.stdout
    assert result.stderr.splitlines() == [
        f"warning: {white}:3: 'bad entry' is not an address, @domain, wildcard or /regex/: "
        "it contains ' '"]
    deny.chmod(0o666)
    white.unlink()
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 1  # the unsafe file; the missing one only warns
    assert result.stderr.splitlines() == [
        f"error: {deny} is writable by every user (mode 0666): refusing it; chmod o-w it; "
        "this list file adds no entries until fixed",
        f"warning: cannot read {white}: No such file or directory; this list file adds no "
        "entries until it appears"]
    deny.chmod(0o644)
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.stderr  # a share not mounted yet blocks nothing
    assert f"  {white} (address): MISSING" in result.stdout


def test_cli_status_has_a_list_files_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import main

    white = write(tmp_path / "white.txt", "@partner.example\nbad entry\n")
    deny = write(tmp_path / "deny.txt", "10.0.0.0/8\n")
    config = _cli_config(tmp_path, white, deny)
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    lines = [line for line in result.output.splitlines() if "List files" in line]
    assert len(lines) == 1 and lines[0].startswith("warn ")
    assert f"1 bad line(s) skipped in {white}" in lines[0]
