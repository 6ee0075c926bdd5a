"""Wheels and release installations for the upgrade tests.

`build_wheel(dest, version, patches)` builds a wheel of this work tree (tracked and new,
not ignored files) with the version changed and optional source patches, e.g. a release
that is DELIBERATELY BROKEN. `SenderLoop` sends numbered messages like an MTA: every 4xx
or refused connection is retried until the message is accepted once.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _source_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO_ROOT / name).is_file()]


def build_wheel(dest: Path, version: str, patches: dict[str, tuple[str, str]] | None = None
                ) -> Path:
    """A wheel postwall-VERSION-py3-none-any.whl in `dest`; `patches` maps a file to
    (old text, new text) replaced in the copy."""
    src = dest / f"src-{version}"
    for name in _source_files():
        if name.startswith(("molecule/", "tests/", "benchmarks/", "roles/", ".ci/")):
            continue
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    edits = {
        "pyproject.toml": ('version = "0.1.0"', f'version = "{version}"'),
        "appliance/__init__.py": ('__version__ = "0.1.0"', f'__version__ = "{version}"'),
        **(patches or {}),
    }
    for name, (old, new) in edits.items():
        path = src / name
        text = path.read_text()
        assert old in text, f"{name}: {old!r} not found"
        path.write_text(text.replace(old, new, 1))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)],
        check=True, capture_output=True,
    )
    wheel = dest / f"postwall-{version}-py3-none-any.whl"
    assert wheel.exists(), f"no {wheel.name} in {dest}"
    shutil.rmtree(src)
    return wheel


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class PortWatch:
    """Connects every `interval` seconds; sums up the time the port refused."""

    host: str
    port: int
    interval: float = 0.02
    refused_seconds: float = 0.0
    longest_gap: float = 0.0
    probes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PortWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        gap_started: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            answers = port_answers(self.host, self.port, timeout=1.0)
            self.probes += 1
            if not answers and gap_started is None:
                gap_started = now
            elif answers and gap_started is not None:
                gap = now - gap_started
                self.refused_seconds += gap
                self.longest_gap = max(self.longest_gap, gap)
                gap_started = None
            time.sleep(self.interval)
        if gap_started is not None:
            gap = time.monotonic() - gap_started
            self.refused_seconds += gap
            self.longest_gap = max(self.longest_gap, gap)


@dataclass
class SenderLoop:
    """Sends messages `prefix-N` one after another until stopped; each is retried on any
    4xx reply or connection failure until it gets 250, like a sending MTA."""

    host: str
    port: int
    prefix: str
    recipient: str = "user@example.com"
    accepted: list[str] = field(default_factory=list)
    temporary_failures: int = 0
    permanent_failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SenderLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _message(self, ident: str) -> str:
        return (f"From: <sender@example.org>\r\nTo: <{self.recipient}>\r\n"
                f"Subject: {ident}\r\nMessage-ID: <{ident}@test.invalid>\r\n\r\n"
                f"body of {ident}\r\n")

    def _send_once(self, ident: str) -> bool:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=20) as client:
                client.ehlo("sender.example.org")
                client.sendmail("sender@example.org", [self.recipient], self._message(ident))
            return True
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                self.permanent_failures.append(f"{ident}: {exc.smtp_code} {exc.smtp_error!r}")
                return True
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if any(code >= 500 for code in codes):
                self.permanent_failures.append(f"{ident}: {exc.recipients}")
                return True
        except (OSError, smtplib.SMTPException):
            pass
        self.temporary_failures += 1
        return False

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            ident = f"{self.prefix}-{number}"
            while not self._send_once(ident):
                time.sleep(0.1)  # an MTA waits minutes; the test has no time for that
            self.accepted.append(ident)
            with contextlib.suppress(Exception):
                time.sleep(0.05)
