"""BATV and SRS key rotation: which keys stay, the file's format, mode and owner, and that
the filters' readers take the rotated file (old tags still verify, new ones are made with
the new key)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import batv, keyfile, srs
from appliance.cli import main
from appliance.keyfile import KeyFileError
from appliance.keyrotation import KeyLine, batv_line, parse, plan, render, rotate, srs_line

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=9)


def key(line: str, days_ago: float | None) -> KeyLine:
    return KeyLine(line, None if days_ago is None else NOW - timedelta(days=days_ago))


def test_a_key_goes_once_its_successor_signed_longer_than_the_window() -> None:
    keys = [key("3 " + "c" * 64, 5), key("2 " + "b" * 64, 10), key("1 " + "a" * 64, 40)]
    new, kept, dropped = plan(keys, batv_line, WINDOW, NOW)
    # 3 signed until now, 2 until 5 days ago: both may have valid tags out there; 1
    # stopped signing 10 days ago, beyond the 9-day window.
    assert [k.line[0] for k in kept] == ["3", "2"] and [k.line[0] for k in dropped] == ["1"]
    assert new.line.startswith("4 ") and len(new.line) == 66 and new.created == NOW


def test_unknown_creation_times_keep_the_keys_below() -> None:
    keys = [key("sa" * 32, None), key("sb" * 32, None), key("sc" * 32, 100)]
    _, kept, dropped = plan(keys, srs_line, WINDOW, NOW)
    assert len(kept) == 3 and dropped == []


def test_batv_numbers_wrap_and_skip_kept_ones_and_ten_in_use_is_refused() -> None:
    kept = [key(f"{n} " + "x" * 64, 1) for n in (9, 0, 2)]
    assert batv_line(kept).startswith("1 ")
    full = [key(f"{n} " + "x" * 64, 1) for n in range(10)]
    with pytest.raises(KeyFileError, match="all ten BATV key numbers"):
        batv_line(full)


def test_render_and_parse_keep_times_and_readers_skip_them() -> None:
    keys = [key("2 " + "b" * 64, 1), key("1 " + "a" * 64, None)]
    text = render(keys)
    assert parse(text) == [KeyLine(keys[0].line, keys[0].created.replace(microsecond=0)),
                           keys[1]]
    assert [k.number for k in batv.parse_key_lines(
        [line for line in text.splitlines() if not line.startswith("#")])] == [2, 1]


def test_rotated_batv_file_still_verifies_old_tags_and_signs_with_the_new_key(
        tmp_path: Path) -> None:
    path = tmp_path / "batv.keys"
    first = batv.load_keys(path)  # made as the proxy makes it
    old_tag = batv.sign("alice@example.com", first[0])
    before = os.stat(path)
    rotation = rotate(path, batv_line, WINDOW)
    after = os.stat(path)
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    keys = batv.load_keys(path)
    assert [k.number for k in keys] == [2, 1] and rotation.new.line.startswith("2 ")
    assert batv.check(old_tag, keys).valid
    new_tag = batv.sign("alice@example.com", keys[0])
    assert new_tag.startswith("prvs=2") and batv.check(new_tag, keys).valid
    assert batv.check(new_tag, first).status is batv.TagStatus.UNKNOWN_KEY


def test_rotated_srs_file_reverses_old_addresses(tmp_path: Path) -> None:
    path = tmp_path / "srs.keys"
    old = srs.SRS(srs.load_secrets(path), "fwd.example")
    address = old.forward("bob@sender.example")
    rotate(path, srs_line, WINDOW)
    new = srs.SRS(srs.load_secrets(path), "fwd.example")
    assert len(new.secrets) == 2 and new.secrets[1] == old.secrets[0]
    assert new.reverse(address).address == "bob@sender.example"
    assert new.forward("bob@sender.example") != address  # signed with the new secret


@pytest.mark.parametrize(("prepare", "message"), [
    (lambda p: None, "does not exist yet"),
    (lambda p: (p.write_text("1 " + "a" * 64 + "\n"), p.chmod(0o644)), "chmod 600"),
    (lambda p: (p.write_text("# nothing\n"), p.chmod(0o600)), "holds no key"),
    (lambda p: (p.with_name("real").write_text("x"), p.symlink_to(p.with_name("real"))),
     "cannot open"),
])
def test_unusable_key_files_are_refused_and_left_alone(tmp_path: Path, prepare,
                                                      message: str) -> None:
    path = tmp_path / "batv.keys"
    prepare(path)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(KeyFileError, match=message):
        rotate(path, batv_line, WINDOW)
    assert (path.read_bytes() if path.exists() else None) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_batv_and_srs_rotate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "postwall.yml"
    config.write_text(f"data_dir: {data}\nlocal_domains: [example.com]\n")
    keyfile.create(data / "batv.keys", f"1 {keyfile.new_secret()}")
    keyfile.create(data / "srs.keys", keyfile.new_secret())
    runner = CliRunner()
    result = runner.invoke(main, ["batv", "rotate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"BATV key file {data / 'batv.keys'}: new signing key number 2"
    assert lines[1].startswith("  kept for verification: number 1 (")
    assert "proxy not reloaded" in lines[2]
    assert [k.number for k in batv.load_keys(data / "batv.keys")] == [2, 1]
    result = runner.invoke(main, ["srs", "rotate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(srs.load_secrets(data / "srs.keys")) == 2
    (data / "srs.keys").chmod(0o640)
    result = runner.invoke(main, ["srs", "rotate", "--config", str(config)])
    assert result.exit_code == 1 and "chmod 600" in result.output
