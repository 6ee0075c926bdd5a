"""Backscatter protection with BATV tags (appliance/batv.py), in three steps that share
`filters.batv`:

- `batv_sign` (mail stage, relay listener): the envelope sender of outgoing mail from a
  local domain is relayed as prvs=KDDDSSSSSS=user@domain;
- `batv` (rcpt stage, inbound): a tagged recipient is relayed without its tag, so the
  internal server sees the plain address; a bounce (null sender) whose tag is forged,
  expired or malformed is refused (block) or scored;
- `batv_bounce` (data stage, inbound): a bounce — the null sender, or a message that is
  recognisably a delivery report — to a local recipient without a valid tag is refused
  or scored. It waits for the content so that read receipts (which go to the untagged
  From address) can be told apart, and DSNs sent with a non-null sender are caught too.
"""

from __future__ import annotations

import logging
from email.message import Message
from typing import ClassVar

from appliance import batv
from appliance.config.schema import BATVSettings
from appliance.context import TransactionContext
from appliance.domains import LocalDomains
from appliance.filters.base import Filter
from appliance.keyfile import KeyFileError
from appliance.lists import ListIndex
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

log = logging.getLogger("postwall.filters.batv")

GROUP = "backscatter"
INVALID_TAG = Reply(550, "5.7.1", "Bounce to an address with an invalid or expired BATV tag; "
                    "we did not send that message")
MISSING_TAG = Reply(550, "5.7.1", "Bounce to an address without a BATV tag; "
                    "we did not send that message")


def is_delivery_report(message: Message) -> bool:
    """multipart/report; report-type=delivery-status (RFC 3464), the form of a DSN."""
    return message.get_content_type() == "multipart/report" and str(
        message.get_param("report-type", "")
    ).lower() == "delivery-status"


def is_read_receipt(message: Message) -> bool:
    """multipart/report; report-type=disposition-notification (RFC 8098)."""
    return message.get_content_type() == "multipart/report" and str(
        message.get_param("report-type", "")
    ).lower() == "disposition-notification"


class _BATVBase(Filter):
    section: ClassVar[str] = "batv"

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, BATVSettings)
        self.batv = settings
        self.local = LocalDomains.from_config(self.config.local_domains)
        self.exempt = ListIndex(settings.exempt, "batv.exempt")
        self.keys: list[batv.BATVKey] = []
        self.key_error: str | None = None

    def load_keys(self) -> None:
        """Read (or make) the key file; a failure is logged once here and then fails each
        check (BATV_*_ERROR, fail open: mail flows untagged) until it is fixed and the
        configuration reloaded."""
        self.key_path = self.batv.key_file or self.config.data_dir / "batv.keys"
        if self.services.dry_run and not self.key_path.exists():
            # A dry run (check-config, analyze, the supervisor's check) writes nothing;
            # the workers make the file.
            self.key_error = f"key file {self.key_path} not made yet"
            return
        try:
            self.keys = batv.load_keys(self.key_path)
        except (KeyFileError, OSError) as exc:
            self.key_error = str(exc)
            log.error("BATV: %s; outgoing senders are not tagged, tags cannot be checked",
                      exc)

    def require_keys(self) -> list[batv.BATVKey]:
        if not self.keys:
            raise KeyFileError(self.key_error or "no BATV key")
        return self.keys

    def is_local(self, address: str) -> bool:
        return self.local.contains(address.rpartition("@")[2])


class BATVSignFilter(_BATVBase):
    name: ClassVar[str] = "batv_sign"
    stage: ClassVar[Stage] = Stage.MAIL
    applies_to_relay: ClassVar[bool] = True
    overrides_accept: ClassVar[bool] = True  # rewriting is no judgement: always tag
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BATV_SIGNED", 0.0, "Outgoing envelope sender tagged with BATV", GROUP),
    )

    def setup(self) -> None:
        super().setup()
        self.load_keys()

    async def check(self, ctx: TransactionContext) -> Verdict:
        sender = ctx.mail_from
        if not ctx.connection.is_relay or not sender or not self.is_local(sender):
            return NO_FINDINGS
        if ctx.downstream_sender is not None or batv.strip(sender)[2]:
            return NO_FINDINGS  # rewritten already, or tagged by the internal server
        if self.exempt.match(sender):
            return NO_FINDINGS
        key = self.require_keys()[0]
        tagged = batv.sign(sender, key, valid_days=self.batv.valid_days, digest=self.batv.hash)
        ctx.downstream_sender = tagged
        return self.found(self.hit("BATV_SIGNED", tagged))


class BATVRecipientFilter(_BATVBase):
    name: ClassVar[str] = "batv"
    stage: ClassVar[Stage] = Stage.RCPT
    overrides_accept: ClassVar[bool] = True  # a whitelisted bounce still needs its tag stripped
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BATV_VALID", 0.0, "Bounce to a return path with a valid BATV tag", GROUP),
        SymbolSpec("BATV_INVALID", 5.0, "Bounce to a return path with a forged or malformed "
                   "BATV tag (backscatter)", GROUP),
        SymbolSpec("BATV_EXPIRED", 5.0, "Bounce to a return path whose BATV tag has expired",
                   GROUP),
    )

    def setup(self) -> None:
        super().setup()
        self.load_keys()

    async def check(self, ctx: TransactionContext) -> Verdict:
        rcpt = ctx.current_rcpt
        assert rcpt is not None
        address = rcpt.relay_address or rcpt.address
        if not self.is_local(address) or not batv.strip(address)[2]:
            return NO_FINDINGS  # untagged: the data stage judges bounces to it
        result = batv.check(address, self.require_keys(), digest=self.batv.hash)
        rcpt.relay_address = result.address  # the internal server knows the plain address
        if result.valid:
            ctx.validated_bounce_rcpts.add(result.address.lower())
            return self.found(self.hit("BATV_VALID", f"{address} -> {result.address}"))
        if ctx.mail_from:
            return NO_FINDINGS  # no bounce: the tag does not matter (batv_bounce reads DSNs)
        log.info("tx=%s BATV: bounce to %s refused: %s", ctx.id, address, result.status)
        name = "BATV_EXPIRED" if result.status is batv.TagStatus.EXPIRED else "BATV_INVALID"
        return self.reject(name, f"{address}: {result.status}", INVALID_TAG)


class BATVBounceFilter(_BATVBase):
    name: ClassVar[str] = "batv_bounce"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BATV_MISSING", 5.0, "Bounce to a local address without a valid BATV tag "
                   "(backscatter)", GROUP),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        message = ctx.message
        if ctx.mail_from and not is_delivery_report(message):
            return NO_FINDINGS
        if self.batv.allow_mdn and is_read_receipt(message):
            return NO_FINDINGS
        untagged = [
            r for r in ctx.rcpt_tos
            if self.is_local(r) and r.lower() not in ctx.validated_bounce_rcpts
            and not self.exempt.match(r)
        ]
        if not untagged:
            return NO_FINDINGS
        kind = "null sender" if not ctx.mail_from else "delivery report"
        log.info("tx=%s BATV: %s to %s without a valid tag", ctx.id, kind, ",".join(untagged))
        return self.reject("BATV_MISSING", f"{kind} to {', '.join(untagged)}", MISSING_TAG)
