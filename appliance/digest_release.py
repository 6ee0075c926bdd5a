"""What the block-report digest links do for one recipient: release (the kept copy is
delivered to that recipient through Postfix and learned as ham, as a false positive) and
release plus whitelisting the sender.

The web UI answers the digest links with `use_link(storage, config, token)`. Its own
quarantine page releases a whole message to all its recipients with
`appliance.quarantine.release`, which is claimed once per message."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING

from appliance import links, outbound
from appliance.classifier.learner import LearnResult
from appliance.learning_loop import learn_weights, learner_for

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.storage.facade import Storage

QUARANTINE_FOLDER = "spam"
BLOCKED_ACTIONS = ("quarantine", "reject", "discard")


class ReleaseError(Exception):
    """The message cannot be released; the text is fit to show the user."""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    txid: str
    recipient: str
    sender: str
    subject: str
    learned: LearnResult
    whitelisted: str | None = None

    def describe(self) -> str:
        text = f"released to {self.recipient}: \"{self.subject[:80]}\" from <{self.sender}>"
        if self.whitelisted:
            text += f"; {self.whitelisted} whitelisted"
        return text


def release(
    storage: Storage, config: Config, txid: str, recipient: str, *, whitelist: bool = False,
    who: str = "",
) -> ReleaseResult:
    """Deliver quarantined message `txid` to `recipient` (one of its recipients), learn
    it as ham and optionally whitelist its sender."""
    entry = storage.messagelog.get(txid)
    if entry is None or entry.action not in BLOCKED_ACTIONS:
        raise ReleaseError("this message is not in the quarantine")
    recipient = recipient.lower()
    if recipient not in (r.lower() for r in entry.recipients):
        raise ReleaseError("this message was not addressed to you")
    try:
        content = storage.mail.read(QUARANTINE_FOLDER, txid)
    except (FileNotFoundError, ValueError):
        raise ReleaseError("this message is no longer kept (retention)") from None
    stamp = f"X-Postwall-Released: by {who or recipient} {formatdate(time.time(), usegmt=True)}"
    try:
        outbound.send(config, entry.sender, [recipient], stamp.encode() + b"\r\n" + content)
    except outbound.DeliveryError as exc:
        raise ReleaseError(f"delivery failed, try again later ({exc})") from exc
    learned = learner_for(storage, config).learn(
        content, "ham", source="quarantine", who=who or recipient,
        weight=learn_weights(config)["ham"])
    whitelisted = None
    if whitelist and entry.sender:
        added = storage.lists.add("whitelist", entry.sender, source="ui", added_by=who or recipient,
                                  comment=f"released from quarantine by {who or recipient}")
        whitelisted = added.value
    return ReleaseResult(txid, recipient, entry.sender, entry.subject, learned, whitelisted)


def use_link(storage: Storage, config: Config, token: str, now: float | None = None
             ) -> ReleaseResult:
    """Carry out a digest link once: verify it, claim it, release. A link used before,
    expired or forged raises `links.LinkError`; nothing is changed then."""
    claims = links.verify(links.load_key(storage.data_dir), token, now)
    if not storage.links.claim(claims.link_id, action=claims.action, txid=claims.txid,
                               recipient=claims.recipient, expires_at=_utc(claims.expires)):
        raise links.LinkError("this link was already used")
    try:
        return release(storage, config, claims.txid, claims.recipient,
                       whitelist=claims.action == "release_whitelist", who=claims.recipient)
    except ReleaseError:
        storage.links.release(claims.link_id)  # nothing happened: the link may be tried again
        raise


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
