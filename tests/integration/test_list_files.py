"""Lists from files against a running proxy: the proxy follows edits of its list files
(atomic rename and in-place writes) without a restart, skips bad lines, keeps the last
good contents when a file disappears or becomes unsafe, and refuses unsafe files."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import ProxyProcess, wait_until
from tests.support.smtpclient import SMTPClient, send_message

# The maintenance tick (2 s) plus the settle time of an in-place write (1 s), with room.
RELOAD_WITHIN = 10.0


@pytest.fixture
def lists_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "lists"
    folder.mkdir(mode=0o755)
    return folder


def write_in_place(path: Path, text: str) -> None:
    with path.open("w") as handle:  # same inode, truncated then written
        handle.write(text)


def write_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


def mail_reply(proxy: ProxyProcess, sender: str) -> int:
    with SMTPClient(*proxy.inbound) as smtp:
        if smtp.greeting.code != 220:
            return smtp.greeting.code
        smtp.ehlo()
        return smtp.mail(sender).code


def greeting(proxy: ProxyProcess) -> int:
    with SMTPClient(*proxy.inbound) as smtp:
        return smtp.greeting.code


def eventually(predicate: Any, what: str) -> None:
    assert wait_until(predicate, RELOAD_WITHIN, interval=0.2), \
        f"not within {RELOAD_WITHIN} s: {what}"


def stays(predicate: Any, seconds: float = 4.5) -> bool:
    """True if `predicate` holds for `seconds` (two maintenance ticks and the settle time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.3)
    return True


def log_of(proxy: ProxyProcess) -> str:
    return proxy.stderr_path.read_text(errors="replace") + proxy.stdout_path.read_text(
        errors="replace")


def test_sender_lists_follow_their_files(proxy_factory: Any, lists_dir: Path) -> None:
    black = lists_dir / "black.txt"
    white = lists_dir / "white.txt"
    black.write_text("# refused senders\n@spam.example\n")
    white.write_text("vip@spam.example  # the one we want\n")
    proxy = proxy_factory({"filters": {"address_lists": {
        "blacklist": [f"file:{black}"], "whitelist": [f"file:{white}", "boss@spam.example"]}}})
    assert mail_reply(proxy, "x@spam.example") == 550
    assert mail_reply(proxy, "vip@spam.example") == 250  # file whitelist: address beats domain
    assert mail_reply(proxy, "boss@spam.example") == 250  # configuration entry still counts
    assert mail_reply(proxy, "y@other.example") == 250

    write_by_rename(black, "@other.example\n")
    eventually(lambda: mail_reply(proxy, "y@other.example") == 550, "renamed blacklist")
    assert mail_reply(proxy, "x@spam.example") == 250

    write_in_place(black, "@other.example\n@third.example\n")
    eventually(lambda: mail_reply(proxy, "z@third.example") == 550, "in-place blacklist")
    assert proxy.is_running


def test_ip_list_file_bad_line_removal_and_unsafe_permissions(
        proxy_factory: Any, lists_dir: Path) -> None:
    deny = lists_dir / "deny.txt"
    deny.write_text("192.0.2.0/24\n")
    proxy = proxy_factory({"filters": {"ip_lists": {"deny": [f"file:{deny}"]}}})
    assert greeting(proxy) == 220

    # A bad line is skipped with file:line in the log; the rest of the file applies.
    write_in_place(deny, "not-an-address\n127.0.0.0/8\n")
    eventually(lambda: greeting(proxy) == 554, "the deny list from the edited file")
    assert f"list file {deny}:1: " in log_of(proxy)

    # The file disappears (a share not mounted, a script half-way): the last good
    # contents stay in force, and the log says so.
    deny.unlink()
    assert stays(lambda: greeting(proxy) == 554)
    assert "keeping its last good contents (1 entries" in log_of(proxy)

    # Back, but writable by everyone: refused; still the last good contents.
    deny.write_text("192.0.2.0/24\n")
    deny.chmod(0o666)
    assert stays(lambda: greeting(proxy) == 554)
    assert "writable by every user" in log_of(proxy)

    deny.chmod(0o644)
    eventually(lambda: greeting(proxy) == 220, "the deny list once the file is safe again")
    assert f"list file {deny} is usable again" in log_of(proxy)


def test_unsafe_file_at_start_adds_nothing_and_says_why(
        proxy_factory: Any, lists_dir: Path) -> None:
    deny = lists_dir / "deny.txt"
    deny.write_text("127.0.0.0/8\n")
    os.chown(deny, 65534, 65534)  # nobody: not root, not the postwall user
    proxy = proxy_factory({"filters": {"ip_lists": {"deny": [f"file:{deny}"]}}})
    assert greeting(proxy) == 220
    assert "is owned by uid 65534, not by root or the postwall user" in log_of(proxy)


def test_regex_file_changes_apply_without_restart(
        proxy_factory: Any, lists_dir: Path, recorded: Any) -> None:
    bomb = lists_dir / "bomb-subject.txt"
    bomb.write_text("lottery=>5\n")
    proxy = proxy_factory({"filters": {"regex": {"bomb_subject_re": [
        {"pattern": f"file:{bomb}"}]}}})

    def final(subject: str) -> int:
        content = (f"From: <a@partner.example>\r\nTo: <bob@example.com>\r\nSubject: {subject}"
                   f"\r\nMessage-ID: <{time.time_ns()}@partner.example>\r\n\r\nHi.\r\n").encode()
        result = send_message(*proxy.inbound, content, mail_from="a@partner.example",
                              rcpt_tos=["bob@example.com"])
        return result.final.code

    assert final("you won the lottery") == 550  # BOMB_SUBJECT 3 x 5 = 15 >= reject (12)
    assert final("casino night") == 250
    write_by_rename(bomb, "# now this\ncasino=>5\n(unclosed\n")
    eventually(lambda: final("casino night") == 550, "the renamed pattern file")
    assert final("you won the lottery") == 250
    assert f"list file {bomb}:3: invalid regular expression" in log_of(proxy)
