"""The health gate after a restart (upgrade, rollback, restore): is the appliance really
serving mail again?

1. every configured SMTP listener answers with a 220 banner;
2. a probe message goes through the whole pipeline to Postfix and back without being
   delivered (appliance/ops/probe.py explains how, and why nobody else can do that);
3. the web UI answers GET /login over HTTPS, when it is installed.

Each step is retried until it passes or the gate's overall timeout is spent (services
take a few seconds to start); the first step that never passed is the reason given.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from appliance.config.schema import Config, parse_hostport
from appliance.ops import probe
from appliance.smtp.replies import RELAY_CLIENT_DENIED

RELAY_DENIED_TEXT = RELAY_CLIENT_DENIED.text

STEP_TIMEOUT = 10.0
RETRY_INTERVAL = 0.2
PROBE_HELO = "health-check.postwall.invalid"


class HealthGateFailed(Exception):
    """The appliance did not come back healthy; the message says what failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepFailed(Exception):
    pass


@dataclass
class GateResult:
    passed: list[str] = field(default_factory=list)  # one line per step
    seconds: float = 0.0


def _connect_host(host: str) -> str:
    """Where to connect for a listener bound to `host` (a wildcard means this host)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class SMTPDialogue:
    """Just enough SMTP to check a banner and send the probe, with clear failures."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.where = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise StepFailed(f"{self.where}: {exc.strerror or exc}") from exc
        self.sock.settimeout(timeout)
        self.buffer = b""

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\n" not in self.buffer:
                try:
                    chunk = self.sock.recv(4096)
                except OSError as exc:
                    raise StepFailed(f"{self.where}: no reply ({exc})") from exc
                if not chunk:
                    raise StepFailed(f"{self.where}: connection closed without a reply")
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\n")
            text = line.decode("ascii", "replace").rstrip("\r")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else 0
        return code, lines[-1]

    def command(self, line: str) -> tuple[int, str]:
        try:
            self.sock.sendall(line.encode() + b"\r\n")
        except OSError as exc:
            raise StepFailed(f"{self.where}: cannot send {line.split()[0]}: {exc}") from exc
        return self.reply()

    def expect(self, line: str, code: int) -> str:
        got, text = self.command(line)
        if got != code:
            raise StepFailed(f"{self.where}: {line.split(':')[0]} answered {text!r}")
        return text

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


def check_banner(
    host: str, port: int, timeout: float = STEP_TIMEOUT, *, expect: int = 220
) -> str:
    """The listener's first reply. `expect` 554: the relay listener refusing the gate's
    own address (not in relay_networks) with Postwall's relay-ACL reply, which proves the
    proxy answers there as well as a 220 would."""
    dialogue = SMTPDialogue(_connect_host(host), port, timeout)
    try:
        code, text = dialogue.reply()
    finally:
        dialogue.close()
    if code != expect or (expect == 554 and RELAY_DENIED_TEXT not in text):
        raise StepFailed(f"{dialogue.where}: banner {text!r}")
    return text


def relay_banner_code(config: Config, host: str) -> int:
    """220 when the address the gate connects from may use the relay listener, else the
    554 of the relay ACL: a real appliance rarely lists loopback in relay_networks."""
    source = ipaddress.ip_address(_connect_host(host))
    allowed = any(source in ipaddress.ip_network(n) for n in config.relay_networks)
    return 220 if allowed else 554


def probe_recipient(config: Config) -> str:
    domain = next((d for d in config.local_domains if not d.startswith("*.")), None)
    if domain is None:
        raise StepFailed("no local domain to address the probe message to (local_domains)")
    return f"postmaster@{domain}"


def send_probe(config: Config, timeout: float = STEP_TIMEOUT) -> str:
    token = probe.read_token(config.data_dir)
    if token is None:
        raise StepFailed(
            f"{probe.token_path(config.data_dir)} is missing or unreadable: the proxy did not "
            "start its pre-flight, or this user may not read the token"
        )
    host, port = parse_hostport(config.listen.inbound)
    recipient = probe_recipient(config)
    message = (
        f"From: Postwall health gate <{recipient}>\r\nTo: <{recipient}>\r\n"
        f"Subject: Postwall health check\r\nDate: {formatdate()}\r\n"
        f"Message-ID: <{uuid.uuid4()}@{PROBE_HELO}>\r\n"
        f"{probe.HEADER}: {token}\r\n\r\n"
        "A message sent by the health gate after a restart; it is judged, never delivered.\r\n"
    )
    dialogue = SMTPDialogue(_connect_host(host), port, timeout)
    try:
        code, text = dialogue.reply()
        if code != 220:
            raise StepFailed(f"{dialogue.where}: banner {text!r}")
        dialogue.expect(f"EHLO {PROBE_HELO}", 250)
        # The null sender: no sender check (local forgery, SPF, callouts) refuses it.
        dialogue.expect("MAIL FROM:<>", 250)
        dialogue.expect(f"RCPT TO:<{recipient}>", 250)
        dialogue.expect("DATA", 354)
        code, text = dialogue.command(message + ".")
    finally:
        dialogue.close()
    if code != 250 or "Health check passed" not in text:
        raise StepFailed(f"the probe message got {text!r} (expected 250 Health check passed)")
    return text


def check_webui(config: Config, timeout: float = STEP_TIMEOUT) -> str:
    host, port = parse_hostport(config.webui.listen)
    context = ssl.create_default_context()
    # Our own UI on this host, often with a self-signed certificate: the gate asks
    # whether it serves, not who it is.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(
        _connect_host(host), port, timeout=timeout, context=context
    )
    try:
        connection.request("GET", "/login")
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise StepFailed(f"web UI https://{host}:{port}/login: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise StepFailed(f"web UI https://{host}:{port}/login answered HTTP {response.status}")
    return f"web UI https://{host}:{port}/login: HTTP 200"


def gate_steps(config: Config, *, webui: bool) -> list[tuple[str, Callable[[], str]]]:
    steps: list[tuple[str, Callable[[], str]]] = []
    for kind, value in (("inbound", config.listen.inbound), ("relay", config.listen.relay)):
        if value:
            host, port = parse_hostport(value)
            code = relay_banner_code(config, host) if kind == "relay" else 220
            steps.append((f"{kind} banner",
                          lambda h=host, p=port, c=code: check_banner(h, p, expect=c)))
    steps.append(("probe message", lambda: send_probe(config)))
    if webui:
        steps.append(("web UI", lambda: check_webui(config)))
    return steps


def run_gate(
    config: Config, *, webui: bool = False, timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> GateResult:
    """Run every step until it passes; HealthGateFailed with the reason otherwise."""
    budget = config.ops.health_timeout if timeout is None else timeout
    started = time.monotonic()
    deadline = started + budget
    result = GateResult()
    for name, step in gate_steps(config, webui=webui):
        last = "not tried"
        while True:
            try:
                outcome = step()
            except StepFailed as exc:
                last = str(exc)
            else:
                result.passed.append(f"{name}: {outcome}")
                if progress is not None:
                    progress(f"health gate: {name} ok")
                break
            if time.monotonic() + RETRY_INTERVAL >= deadline:
                raise HealthGateFailed(
                    f"{name} failed after {time.monotonic() - started:.1f}s: {last}"
                )
            time.sleep(RETRY_INTERVAL)
    result.seconds = time.monotonic() - started
    return result
