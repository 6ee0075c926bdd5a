"""Helpers for the web UI's tests: a Flask test client that speaks HTTPS with CSRF tokens
and logs in like a browser, accounts made straight in the storage, and the real
`postwall webui serve` process with a throwaway certificate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.services import LOOPBACK, ServiceError, free_port, terminate, wait_until

CSRF_RE = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')
ADMIN_PASSWORD = "admin password for tests"
OPERATOR_PASSWORD = "operator password for tests"
BASE_URL = "https://localhost"  # the UI serves HTTPS only; Flask-WTF checks the Referer then


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    if match is None:
        raise AssertionError("no CSRF token on the page")
    return match.group(1)


class UIClient:
    """`app.test_client()` over https, sending a same-origin Referer as browsers do
    (Flask-WTF checks it on HTTPS) and the page's CSRF token with every form."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.client.environ_base["REMOTE_ADDR"] = "192.0.2.10"
        self._token: str | None = None

    def get(self, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("base_url", BASE_URL)
        response = self.client.get(url, **kwargs)
        if response.mimetype == "text/html":
            match = CSRF_RE.search(response.get_data(as_text=True))
            if match:
                self._token = match.group(1)
        return response

    def token(self) -> str:
        if self._token is None:
            self.get("/login")
        assert self._token is not None
        return self._token

    def post(self, url: str, data: Mapping[str, Any] | None = None, *, csrf: bool = True,
             **kwargs: Any) -> Any:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.token())
        headers = {"Referer": f"{BASE_URL}/", **kwargs.pop("headers", {})}
        kwargs.setdefault("base_url", BASE_URL)
        response = self.client.post(url, data=form, headers=headers, **kwargs)
        if response.mimetype == "text/html":
            match = CSRF_RE.search(response.get_data(as_text=True))
            if match:
                self._token = match.group(1)
        return response

    def login(self, username: str, password: str) -> Any:
        self.get("/login")
        response = self.post("/login", {"username": username, "password": password})
        if response.status_code == 302:
            self.get("/account/password")  # a login starts a new session: a new token
        return response


def create_user(storage: Any, username: str, password: str, role: str, *,
                must_change: bool = False) -> None:
    from webui.passwords import hash_password

    storage.users.create(username, hash_password(password), role,
                         must_change_password=must_change)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "webui-cert.pem", directory / "webui-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


class WebUIProcess:
    """`python -m appliance webui serve --config FILE` on a free loopback port.

    The web UI reads the proxy's configuration file; its `webui` section (listener,
    certificate) is added to that file before the start."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.port = free_port()
        self.cert, self.key = self_signed_certificate(workdir)
        self.log_path = workdir / "webui.log"
        self._proc: subprocess.Popen[bytes] | None = None
        config = yaml.safe_load(config_path.read_text()) or {}
        config["webui"] = {"listen": f"{LOOPBACK}:{self.port}", "cert_file": str(self.cert),
                           "key_file": str(self.key)}
        tmp = config_path.with_name(f".{config_path.name}.tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, config_path)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> WebUIProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "webui", "serve", "--config",
                 str(self.config_path)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        if not wait_until(lambda: self._listening() or self._proc.poll() is not None, timeout):
            self.stop()
            raise ServiceError(f"web UI did not listen on {self.port}:\n{self.log_text()}")
        if self._proc.poll() is not None:
            raise ServiceError(f"web UI exited with {self._proc.returncode}:\n{self.log_text()}")
        return self

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        terminate(proc, timeout=10)
        return proc.returncode


def chromium_available() -> str | None:
    """None if Debian's chromium and chromedriver are installed, else why not."""
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-test-deps installs it)"
    return None


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
