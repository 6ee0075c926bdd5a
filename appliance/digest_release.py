"""What the block-report digest links do for one recipient: release (the kept copy is
delivered to that recipient through Postfix and learned as ham, as a false positive) and
release plus whitelisting the sender.

The web UI answers the digest links: `preview(storage, token)` on the confirmation page
(checks everything, changes nothing), `use_link(storage, config, token)` when the user
confirms. Its own quarantine page releases a whole message to all its recipients with
`appliance.quarantine.release`, which is claimed once per message; each path refuses
what the other already delivered, so nobody gets a released message twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from appliance import links, outbound
from appliance.classifier.learner import LearnResult
from appliance.quarantine import learn_released, prepare_release

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.storage.facade import Storage
    from appliance.storage.messagelog import MessageLogEntry

QUARANTINE_FOLDER = "spam"
BLOCKED_ACTIONS = ("quarantine", "reject", "discard")


class ReleaseError(Exception):
    """The message cannot be released; the text is fit to show the user."""


class MessageGone(ReleaseError):
    """The message is no longer there to release (never kept, purged, or released)."""


class DeliveryFailed(ReleaseError):
    """Postfix did not take the message; trying again later may work."""


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


@dataclass(frozen=True, slots=True)
class LinkPreview:
    """What a valid, unused link would do: all its holder may see of the message."""

    action: str
    txid: str
    recipient: str
    sender: str
    subject: str
    expires: datetime

    @property
    def whitelists(self) -> bool:
        return self.action == "release_whitelist"


def _releasable(storage: Storage, txid: str, recipient: str) -> tuple[MessageLogEntry, bytes]:
    """The log entry and kept copy of `txid` if `recipient` may still have it released."""
    entry = storage.messagelog.get(txid)
    if entry is None or entry.action not in BLOCKED_ACTIONS:
        raise MessageGone("this message is not in the quarantine")
    if recipient not in (r.lower() for r in entry.recipients):
        raise ReleaseError("this message was not addressed to you")
    released = storage.releases.get(txid)
    if released is not None:  # the whole message, from the web UI's quarantine page
        raise MessageGone("this message was already released from the quarantine "
                          f"({released.released_at:%Y-%m-%d %H:%M} UTC)")
    try:
        content = storage.mail.read(QUARANTINE_FOLDER, txid)
    except (FileNotFoundError, ValueError):
        raise MessageGone("this message is no longer kept (retention)") from None
    return entry, content


def release(
    storage: Storage, config: Config, txid: str, recipient: str, *, whitelist: bool = False,
    who: str = "",
) -> ReleaseResult:
    """Deliver quarantined message `txid` to `recipient` (one of its recipients), learn
    it as ham and optionally whitelist its sender."""
    recipient = recipient.lower()
    entry, content = _releasable(storage, txid, recipient)
    try:
        outbound.send(config, entry.sender, [recipient],
                      prepare_release(content, txid, who or recipient, entry.listener))
    except outbound.DeliveryError as exc:
        raise DeliveryFailed(f"delivery failed, try again later ({exc})") from exc
    learned = learn_released(storage, config, content, who or recipient)
    whitelisted = None
    if whitelist and entry.sender:
        added = storage.lists.add("whitelist", entry.sender, source="ui", added_by=who or recipient,
                                  comment=f"released from quarantine by {who or recipient}")
        whitelisted = added.value
    return ReleaseResult(txid, recipient, entry.sender, entry.subject, learned, whitelisted)


def preview(storage: Storage, token: str, now: float | None = None) -> LinkPreview:
    """Check a digest link as `use_link` would, changing nothing; LinkError or
    ReleaseError say why it cannot be used."""
    claims = links.verify(links.load_key(storage.data_dir), token, now)
    if storage.links.is_used(claims.link_id):
        raise links.LinkUsed("this link was already used")
    entry, _ = _releasable(storage, claims.txid, claims.recipient)
    return LinkPreview(claims.action, claims.txid, claims.recipient, entry.sender,
                       entry.subject, _utc(claims.expires))


def use_link(storage: Storage, config: Config, token: str, now: float | None = None
             ) -> ReleaseResult:
    """Carry out a digest link once: verify it, claim it, release. A link used before,
    expired or forged raises `links.LinkError`; nothing is changed then."""
    claims = links.verify(links.load_key(storage.data_dir), token, now)
    if not storage.links.claim(claims.link_id, action=claims.action, txid=claims.txid,
                               recipient=claims.recipient, expires_at=_utc(claims.expires)):
        raise links.LinkUsed("this link was already used")
    try:
        return release(storage, config, claims.txid, claims.recipient,
                       whitelist=claims.action == "release_whitelist", who=claims.recipient)
    except ReleaseError:
        storage.links.release(claims.link_id)  # nothing happened: the link may be tried again
        raise


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
