"""SRS (appliance/srs.py), two steps sharing `filters.srs`:

- `srs_forward` (mail stage, relay listener): mail whose envelope sender is not in
  local_domains is mail the internal server forwards (an alias or a rule sending a
  local user's mail on to an outside address). Relayed with the sender as it is, SPF
  of the sender's domain would fail at the next hop; it is relayed from
  SRS0=HASH=TT=domain=user@<srs domain> (SRS1 for an address already rewritten by
  another forwarder).
- `srs` (rcpt stage, inbound): a recipient of the SRS domain that looks like SRS0/SRS1 is
  a returning bounce: its hash and timestamp are checked and it is relayed to the
  original sender. A malformed, forged or expired one is refused with 550 5.1.1 (block)
  or scored (score: relayed as given).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from appliance import srs
from appliance.config.schema import SRSSettings
from appliance.context import TransactionContext
from appliance.domains import LocalDomains, printable
from appliance.filters.base import Filter
from appliance.keyfile import KeyFileError
from appliance.lists import ListIndex
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

log = logging.getLogger("postwall.filters.srs")

GROUP = "srs"


def invalid_reply(reason: str) -> Reply:
    return Reply(550, "5.1.1", f"Invalid SRS address: {reason}")


class _SRSBase(Filter):
    section: ClassVar[str] = "srs"

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, SRSSettings)
        assert settings.domain is not None  # the schema requires it unless mode is off
        self.srs_settings = settings
        self.local = LocalDomains.from_config(self.config.local_domains)
        if not self.local.contains(settings.domain):
            raise ValueError(
                f"filters.srs.domain {settings.domain} must be one of local_domains: bounces "
                "to it arrive on the inbound listener"
            )
        self.key_path = settings.key_file or self.config.data_dir / "srs.keys"
        self.rewriter: srs.SRS | None = None
        self.key_error: str | None = None
        if self.services.dry_run and not self.key_path.exists():
            # A dry run (check-config, analyze, the supervisor's check) writes nothing;
            # the workers make the file.
            self.key_error = f"key file {self.key_path} not made yet"
            return
        try:
            self.rewriter = srs.SRS(
                srs.load_secrets(self.key_path), settings.domain,
                max_age_days=settings.max_age_days, hash_length=settings.hash_length,
            )
        except (KeyFileError, OSError) as exc:
            self.key_error = str(exc)
            log.error("SRS: %s; forwarded mail keeps its sender, SRS bounces cannot be "
                      "reversed", exc)

    def require_rewriter(self) -> srs.SRS:
        if self.rewriter is None:
            raise KeyFileError(self.key_error or "no SRS secret")
        return self.rewriter


class SRSForwardFilter(_SRSBase):
    name: ClassVar[str] = "srs_forward"
    stage: ClassVar[Stage] = Stage.MAIL
    applies_to_relay: ClassVar[bool] = True
    overrides_accept: ClassVar[bool] = True
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("SRS_REWRITTEN", 0.0, "Forwarded mail: envelope sender rewritten with SRS",
                   GROUP),
    )

    def setup(self) -> None:
        super().setup()
        settings = self.settings
        assert isinstance(settings, SRSSettings)
        self.exempt = ListIndex(settings.exempt, "srs.exempt")

    async def check(self, ctx: TransactionContext) -> Verdict:
        sender = ctx.mail_from
        if not ctx.connection.is_relay or not sender or ctx.downstream_sender is not None:
            return NO_FINDINGS
        domain = sender.rpartition("@")[2]
        if not domain or self.local.contains(domain) or self.exempt.match(sender):
            return NO_FINDINGS
        rewritten = self.require_rewriter().forward(sender)
        if rewritten == sender:
            return NO_FINDINGS
        ctx.downstream_sender = rewritten
        return self.found(self.hit("SRS_REWRITTEN", f"{sender} -> {rewritten}"))


class SRSReverseFilter(_SRSBase):
    name: ClassVar[str] = "srs"
    stage: ClassVar[Stage] = Stage.RCPT
    overrides_accept: ClassVar[bool] = True  # a reversed address must be relayed as such
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("SRS_REVERSED", 0.0, "Bounce to a valid SRS address, sent on to the "
                   "original sender", GROUP),
        SymbolSpec("SRS_INVALID", 5.0, "Mail to a malformed, forged or expired SRS address",
                   GROUP),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        rcpt = ctx.current_rcpt
        assert rcpt is not None
        address = rcpt.relay_address or rcpt.address
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain != self.srs_settings.domain or not srs.looks_like_srs(address):
            return NO_FINDINGS
        try:
            reversal = self.require_rewriter().reverse(address)
        except srs.SRSError as exc:
            log.warning("tx=%s SRS: refused <%s> from <%s>: %s", ctx.id, printable(address, 300),
                        printable(ctx.mail_from, 300), exc)
            return self.reject("SRS_INVALID", f"{address}: {exc}", invalid_reply(str(exc)))
        rcpt.relay_address = reversal.address
        ctx.validated_bounce_rcpts.add(reversal.address.lower())
        return self.found(self.hit("SRS_REVERSED", f"{address} -> {reversal.address}"))
