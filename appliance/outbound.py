"""Mail the appliance writes itself (command answers, block-report digests, released
quarantine) goes out through the local Postfix, like every relayed message.

Blocking (smtplib): callers on an event loop use `asyncio.to_thread`; the web UI and the
command line call it directly."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from appliance.config.schema import Config


class DeliveryError(Exception):
    """Postfix did not take the message; the text says what it answered."""


def send(config: Config, sender: str, recipients: Sequence[str], content: bytes) -> None:
    """Hand `content` to the downstream Postfix for `recipients`; raise DeliveryError
    unless every recipient was accepted."""
    downstream = config.downstream
    try:
        with smtplib.SMTP(downstream.host, downstream.port, local_hostname=config.smtp.hostname,
                          timeout=downstream.timeout) as smtp:
            refused = smtp.sendmail(sender, list(recipients), content)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"recipients refused: {_answers(exc.recipients)}") from exc
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"downstream unavailable: {exc}") from exc
    if refused:
        raise DeliveryError(f"recipients refused: {_answers(refused)}")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _answers(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in refused.items())


def system_sender(config: Config) -> str:
    return config.block_reports.sender or f"postwall@{config.commands.domain}"


def compose(
    config: Config, *, to: str, subject: str, text: str, sender: str | None = None,
    attachments: Sequence[tuple[str, bytes]] = (), in_reply_to: str | None = None,
) -> bytes:
    """A plain-text message from the appliance, marked as automatic (RFC 3834) so that
    no autoresponder answers it."""
    msg = EmailMessage()
    msg["From"] = f"Postwall <{sender or system_sender(config)}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(time.time(), localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.commands.domain)
    msg["Auto-Submitted"] = "auto-replied" if in_reply_to else "auto-generated"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(text)
    for filename, data in attachments:
        msg.add_attachment(data, maintype="text", subtype="plain", filename=filename)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
