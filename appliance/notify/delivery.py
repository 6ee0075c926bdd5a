"""Getting a notification out: the local Postfix first, then the fallback smarthost, and
when neither takes it, a spool file that is retried.

Postfix queues the mail while the internal server is down, so it is the first choice; but
"Postfix down" must reach the administrator too, hence the fallback (e.g. the internal
mail server itself) and the spool. Blocking (smtplib, with timeouts): callers on an event
loop run it in a thread.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import smtplib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from appliance.config.schema import Config

log = logging.getLogger("postwall.notify")

SPOOL_DIRNAME = "spool"
MAX_SPOOL_FILES = 1000  # a very long outage must not fill the disk with notifications


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    recipients: tuple[str, ...]
    content: bytes


def sender_address(config: Config) -> str:
    return config.notifications.sender or f"postwall@{config.smtp.hostname}"


def compose(config: Config, *, to: str, subject: str, text: str, kind: str) -> Envelope:
    msg = EmailMessage()
    sender = sender_address(config)
    msg["From"] = f"Postwall <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(time.time(), localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2] or "postwall.invalid"
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoresponder answers it
    msg["X-Postwall-Notification"] = kind
    msg.set_content(text)
    content = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return Envelope(sender, (to,), content)


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _smtp_send(host: str, port: int, envelope: Envelope, helo: str, timeout: float) -> None:
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as smtp:
        refused = smtp.sendmail(envelope.sender, list(envelope.recipients), envelope.content)
    if refused:
        raise smtplib.SMTPRecipientsRefused(refused)


def _routes(config: Config) -> list[tuple[str, str, int]]:
    routes = [("postfix", config.downstream.host, config.downstream.port)]
    fallback = config.notifications.fallback_smarthost
    if fallback:
        routes.append(("fallback", *_split_hostport(fallback)))
    return routes


def try_routes(config: Config, envelope: Envelope) -> str | None:
    """Hand `envelope` to the first route that takes it; its name, or None."""
    errors = []
    for name, host, port in _routes(config):
        try:
            _smtp_send(host, port, envelope, config.smtp.hostname,
                       config.notifications.send_timeout)
        except (smtplib.SMTPException, OSError) as exc:
            errors.append(f"{name} {host}:{port}: {exc}")
            continue
        if errors:
            log.warning("notification sent through %s after: %s", name, "; ".join(errors))
        return name
    log.error("notification not sent (%s)", "; ".join(errors))
    return None


def deliver(config: Config, directory: Path, envelope: Envelope) -> str:
    """Send now, or spool for a retry: "postfix", "fallback" or "spooled" (or "lost" when
    even the spool cannot take it, which is logged as an error)."""
    route = try_routes(config, envelope)
    if route is not None:
        return route
    try:
        path = spool(directory, envelope)
    except OSError as exc:
        log.error("notification lost: cannot spool it in %s: %s", directory, exc)
        return "lost"
    log.warning("notification spooled in %s for a retry", path)
    return "spooled"


def spool_dir(directory: Path) -> Path:
    return directory / SPOOL_DIRNAME


def spool(directory: Path, envelope: Envelope) -> Path:
    folder = spool_dir(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    files = sorted(folder.glob("*.json"))
    if len(files) >= MAX_SPOOL_FILES:
        raise OSError(f"{len(files)} notifications already waiting")
    record = {
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "content": base64.b64encode(envelope.content).decode("ascii"),
    }
    path = folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def spooled(directory: Path) -> list[Path]:
    folder = spool_dir(directory)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def retry_spool(config: Config, directory: Path) -> tuple[int, int]:
    """Send what waits in the spool, oldest first; (sent, still waiting). One process at
    a time (a non-blocking lock): another one retrying now is left to it."""
    files = spooled(directory)
    if not files:
        return 0, 0
    lock = os.open(spool_dir(directory) / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0, len(files)
        sent = 0
        for path in spooled(directory):
            try:
                envelope = _load(path)
            except (OSError, ValueError, KeyError) as exc:
                log.error("spooled notification %s unreadable, moved aside: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                continue
            if try_routes(config, envelope) is None:
                break  # still nobody takes mail: keep the order, try again later
            path.unlink(missing_ok=True)
            sent += 1
        if sent:
            log.info("sent %d spooled notification(s)", sent)
        return sent, len(spooled(directory))
    finally:
        os.close(lock)


def _load(path: Path) -> Envelope:
    record = json.loads(path.read_text())
    recipients: Sequence[str] = record["recipients"]
    return Envelope(str(record["sender"]), tuple(str(r) for r in recipients),
                    base64.b64decode(record["content"]))
