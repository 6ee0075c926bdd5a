"""Wheels and release installations for the upgrade tests.

`build_wheel(dest)` builds a real wheel of this work tree (tracked and new, not ignored
files) with pip, once. `derive_wheel(base, dest, version, patches, files)` makes the other
releases from it in well under a second: the same wheel with the version changed,
optional source patches (e.g. a release that is DELIBERATELY BROKEN) and added files (e.g.
a new migration), its RECORD rewritten. `build_wheelhouse(dest)` collects the wheels of
every dependency once, so that the releases the tests install (a real venv and
a real `pip install` of the release's wheel) need no index: ops.pip_args = `--no-index
--find-links WHEELHOUSE`. `SenderLoop` sends numbered messages like an MTA: every 4xx or
refused connection is retried until the message is accepted once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_VERSION = "0.1.0"


def _source_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO_ROOT / name).is_file()]


def build_wheel(dest: Path) -> Path:
    """postwall-0.1.0-py3-none-any.whl of this work tree, built by pip, in `dest`."""
    src = dest / "src"
    for name in _source_files():
        if name.startswith(("molecule/", "tests/", "benchmarks/", "roles/", ".ci/")):
            continue
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)],
        check=True, capture_output=True,
    )
    wheel = dest / f"postwall-{BASE_VERSION}-py3-none-any.whl"
    assert wheel.exists(), f"no {wheel.name} in {dest}"
    shutil.rmtree(src)
    return wheel


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def derive_wheel(
    base: Path, dest: Path, version: str, patches: dict[str, tuple[str, str]] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """The base wheel as release `version`; `patches` maps a file of the wheel to (old
    text, new text) replaced once, `files` adds files (path in the wheel -> text)."""
    old_info, new_info = f"postwall-{BASE_VERSION}.dist-info/", f"postwall-{version}.dist-info/"
    edits = {
        "appliance/__init__.py": (f'__version__ = "{BASE_VERSION}"', f'__version__ = "{version}"'),
        f"{old_info}METADATA": (f"\nVersion: {BASE_VERSION}\n", f"\nVersion: {version}\n"),
        **(patches or {}),
    }
    contents: dict[str, bytes] = {}
    with zipfile.ZipFile(base) as source:
        for name in source.namelist():
            if name == f"{old_info}RECORD":
                continue
            data = source.read(name)
            if name in edits:
                old, new = edits.pop(name)
                text = data.decode()
                assert old in text, f"{name}: {old!r} not found"
                data = text.replace(old, new, 1).encode()
            contents[name.replace(old_info, new_info, 1)] = data
    assert not edits, f"not in the wheel: {sorted(edits)}"
    for name, text in (files or {}).items():
        contents[name] = text.encode()
    wheel = dest / f"postwall-{version}-py3-none-any.whl"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in contents.items()]
    record.append(f"{new_info}RECORD,,")
    contents[f"{new_info}RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in contents.items():
            out.writestr(name, data)
    return wheel


def build_wheelhouse(dest: Path) -> Path:
    """The wheels of every dependency in pyproject.toml (pip's cache and indexes, once)."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), *dependencies],
        check=True, capture_output=True,
    )
    return dest


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
    unsent: str | None = None
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
        client = None
        try:
            client = smtplib.SMTP(self.host, self.port, timeout=20)
            client.ehlo("sender.example.org")
            client.sendmail("sender@example.org", [self.recipient], self._message(ident))
            # The 250 after the data is what counts, as for an MTA: whatever answers the
            # QUIT (a proxy entering maintenance closes with 421) changes nothing, and
            # sending the message again would deliver it twice.
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()
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
        finally:
            if client is not None:
                client.close()
        self.temporary_failures += 1
        return False

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            ident = f"{self.prefix}-{number}"
            while not self._send_once(ident):
                if self._stop.wait(0.1):  # an MTA waits minutes; the test has no time
                    self.unsent = ident  # stopped before this one got through
                    return
            self.accepted.append(ident)
            with contextlib.suppress(Exception):
                time.sleep(0.05)
