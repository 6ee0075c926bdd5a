"""Acting on kept mail: release, report as spam / not spam, delete.

A release hands the kept copy straight to the downstream Postfix, so it is delivered
without being filtered again, to the envelope recipients the message log recorded, and
at most once: the release is claimed in the database before Postfix sees the message
(see `appliance.storage.releases`). Copies of our own verdict headers are removed and a
header says who released the message. Recipients who already released their copy through
a block-report link (`appliance.digest_release`) are left out. A delivered release is
learned as ham, with the weight of a false positive.

Reports copy the message into ``errors/spam`` or ``errors/notspam``, the folders the
statistical classifier learns its corrections from.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from email.utils import formatdate

from appliance.actions import header_line, strip_own_headers
from appliance.classifier.learner import LearnResult
from appliance.config.schema import Config
from appliance.learning_loop import learn_weights, learner_for
from appliance.storage.facade import Storage
from appliance.storage.mailstore import validate_folder, validate_txid

log = logging.getLogger("postwall.quarantine")

REPORT_FOLDERS = {"spam": "errors/spam", "notspam": "errors/notspam"}


class QuarantineError(Exception):
    """The action was not carried out; the message says why, for a person to read."""


class ReleaseUncertain(QuarantineError):
    """The connection failed after the message was sent: Postfix may have taken it. The
    release stays recorded, so it is never sent a second time."""


@dataclass
class ReleaseResult:
    txid: str
    sender: str
    delivered_to: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> Postfix's reply
    reply: str = ""  # Postfix's answer to the end of DATA
    skipped: list[str] = field(default_factory=list)  # released through their digest link
    learned: LearnResult | None = None


def release(
    storage: Storage, config: Config, folder: str, txid: str, username: str
) -> ReleaseResult:
    validate_folder(folder)
    validate_txid(txid)
    try:
        content = storage.mail.read(folder, txid)
    except FileNotFoundError:
        raise QuarantineError(f"no kept message {txid} in {folder}/") from None
    entry = storage.messagelog.get(txid)
    if entry is None or not entry.recipients:
        raise QuarantineError(
            f"the message log has no envelope for {txid} (purged?): its recipients are unknown"
        )
    skipped = sorted(storage.links.recipients_of(txid))
    recipients = [r for r in entry.recipients if r.lower() not in skipped]
    if not recipients:
        raise QuarantineError(f"every recipient of {txid} already released it through the "
                              f"link in their block report ({', '.join(skipped)})")
    if not storage.releases.claim(txid, folder, username):
        known = storage.releases.get(txid)
        when = known.released_at.strftime("%Y-%m-%d %H:%M UTC") if known else "earlier"
        who = known.released_by if known else "someone"
        raise QuarantineError(f"{txid} was already released by {who} at {when}")
    try:
        result = _hand_to_postfix(config, txid, entry.sender, recipients,
                                  prepare_release(content, txid, username, entry.listener))
    except ReleaseUncertain as exc:
        storage.releases.complete(txid, f"unknown: {exc}")
        raise
    except BaseException:
        storage.releases.abandon(txid)
        raise
    storage.releases.complete(txid, result.reply)
    result.skipped = skipped
    result.learned = learn_released(storage, config, content, username)
    return result


def learn_released(storage: Storage, config: Config, content: bytes, who: str) -> LearnResult:
    """Learn a released message as ham ("released = ham", a false positive). It is
    delivered already, so a failure here is logged and reported, never raised."""
    try:
        return learner_for(storage, config).learn(
            content, "ham", source="quarantine", who=who, weight=learn_weights(config)["ham"])
    except Exception as exc:
        log.exception("a released message was not learned as ham")
        return LearnResult("refused", "ham", detail=f"learning failed: {exc}")


def prepare_release(content: bytes, txid: str, username: str, listener: str) -> bytes:
    """The kept copy as it is delivered: forged verdict headers of inbound mail removed,
    our id and who released it added."""
    if listener == "inbound":
        content = strip_own_headers(content)
    return (
        header_line("X-Postwall-Id", txid)
        + header_line("X-Postwall-Released", f"by {username} at {formatdate(usegmt=True)}")
        + content
    )


def _hand_to_postfix(
    config: Config, txid: str, sender: str, recipients: list[str], content: bytes
) -> ReleaseResult:
    downstream = config.downstream
    where = f"{downstream.host}:{downstream.port}"
    result = ReleaseResult(txid, sender, [])
    try:
        with smtplib.SMTP(
            downstream.host, downstream.port, local_hostname=config.smtp.hostname,
            timeout=downstream.timeout,
        ) as smtp:
            smtp.ehlo()
            options = []
            if not all(a.isascii() for a in (sender, *recipients)):
                options.append("SMTPUTF8")
            if not content.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            code, text = smtp.mail(sender, options)
            if code != 250:
                raise QuarantineError(f"{where} refused the sender: {code} {_text(text)}")
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt)
                if code in (250, 251):
                    result.delivered_to.append(rcpt)
                else:
                    result.refused[rcpt] = f"{code} {_text(text)}"
            if not result.delivered_to:
                smtp.rset()
                refused = "; ".join(f"{r}: {t}" for r, t in result.refused.items())
                raise QuarantineError(f"{where} refused every recipient: {refused}")
            try:
                code, text = smtp.data(content)
            except (OSError, smtplib.SMTPException) as exc:
                if isinstance(exc, smtplib.SMTPDataError):  # refused before the content
                    raise QuarantineError(f"{where} refused DATA: {exc}") from exc
                raise ReleaseUncertain(
                    f"the connection to {where} failed after the message was sent ({exc}); "
                    "check whether it arrived before releasing it another way"
                ) from exc
            if code != 250:
                raise QuarantineError(f"{where} refused the message: {code} {_text(text)}")
            result.reply = f"{code} {_text(text)}"
    except QuarantineError:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise QuarantineError(f"cannot hand the message to {where}: {exc}") from exc
    return result


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())


def report(storage: Storage, folder: str, txid: str, kind: str) -> str:
    """Copy a kept message into errors/spam or errors/notspam; returns that folder. The
    latest report wins: a copy in the other folder is removed, or every scan of the
    error folders would learn the message one way and then correct it back."""
    if kind not in REPORT_FOLDERS:
        raise QuarantineError(f"unknown report {kind!r}; expected spam or notspam")
    try:
        content = storage.mail.read(validate_folder(folder), validate_txid(txid))
    except FileNotFoundError:
        raise QuarantineError(f"no kept message {txid} in {folder}/") from None
    target = REPORT_FOLDERS[kind]
    storage.mail.keep(target, txid, content)
    for other in REPORT_FOLDERS.values():
        if other != target:
            storage.mail.delete(other, txid)
    return target


def delete(storage: Storage, folder: str, txid: str) -> None:
    if not storage.mail.delete(validate_folder(folder), validate_txid(txid)):
        raise QuarantineError(f"no kept message {txid} in {folder}/")
