"""The learning loop inside a running proxy: the error folders are learned, the periodic
rebuild runs as its own process, and a trained classifier scores inbound mail."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.support.services import wait_until
from tests.support.smtpclient import send_message


def mail(subject: str, body: str, sender: str) -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@x.example>\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n").encode()


def rows(proxy, query: str) -> list[tuple]:
    with sqlite3.connect(proxy.data_dir / "postwall.db") as db:
        return db.execute(query).fetchall()


def test_error_folders_and_the_periodic_rebuild(proxy_factory, recorded):
    proxy = proxy_factory(start=False)
    folder = proxy.data_dir / "mail" / "errors" / "spam"
    folder.mkdir(parents=True)
    (folder / "dropped1.eml").write_bytes(mail("cheap pills", "buy cheap pills", "x@bad.example"))
    stamp = proxy.data_dir / "run" / "bayes-rebuild.stamp"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    old = time.time() - 2 * 86400
    os.utime(stamp, (old, old))  # the last rebuild was two days ago: one is due
    proxy.start()
    assert wait_until(lambda: rows(proxy, "SELECT label, source, weight FROM training_ledger"),
                      15)
    assert rows(proxy, "SELECT label, source, weight, who FROM training_ledger") == [
        ("spam", "folder", 2, "errors/spam")]
    assert wait_until(lambda: rows(
        proxy, "SELECT value FROM counters WHERE name='bayes_generation'") == [(1,)], 30)
    assert stamp.stat().st_mtime > old


def test_trained_classifier_scores_inbound_mail(proxy_factory, recorded, tmp_path: Path):
    proxy = proxy_factory({"filters": {"bayes": {"min_spam": 5, "min_ham": 5}}})
    files = {"spam": [], "ham": []}
    for i in range(8):
        spam = tmp_path / f"s{i}.eml"
        spam.write_bytes(mail(f"cheap pills offer {i}", f"buy cheap viagra pills now {i}",
                              "shop@pills.example"))
        files["spam"].append(str(spam))
        ham = tmp_path / f"h{i}.eml"
        ham.write_bytes(mail(f"project meeting {i}", f"agenda for our project meeting {i}",
                             "alice@partner.example"))
        files["ham"].append(str(ham))
    for label, paths in files.items():
        subprocess.run([sys.executable, "-m", "appliance", "learn", label, "--config",
                        str(proxy.config_path), *paths], check=True, capture_output=True)

    def verdict() -> str:
        recorded.clear()
        content = mail("cheap pills", "buy cheap viagra pills", "shop@pills.example")
        assert send_message(*proxy.inbound, content, mail_from="shop@pills.example",
                            rcpt_tos=["bob@example.com"]).accepted
        [message] = recorded.wait_for(1)
        return message.header("X-Spam-Symbols") or ""

    # The worker picks the new counts up at its next maintenance tick.
    assert wait_until(lambda: "BAYES_99" in verdict(), 15, interval=1.0)  # or BAYES_999
