"""Virus scanning: the whole message, as received, streamed to clamd (INSTREAM).

clamd decodes MIME, base64 and archives itself, so the exact octets go to it. A virus is
refused with a forced final (a virus beats a whitelist and noprocessing). When clamd is
unreachable, failing or too slow the message gets the configured on_error: tempfail
(default) means it is never delivered unscanned unless the operator chose fail_open.
"""

from __future__ import annotations

import logging
import re
from typing import ClassVar

from appliance import notify
from appliance.clamd import ClamdClient, ClamdError, ClamdSizeLimitExceeded, ClamdUnavailable
from appliance.config.schema import ClamAVSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter, error_symbol_name
from appliance.verdict import (
    NO_FINDINGS,
    Decision,
    Final,
    OnError,
    Reply,
    Stage,
    Symbol,
    SymbolSpec,
    Verdict,
)

log = logging.getLogger("postwall.filters.clamav")

VIRUS_SYMBOL = "CLAMAV_VIRUS"
UNSCANNED_SYMBOL = "CLAMAV_UNSCANNED"
ERROR_SYMBOL = error_symbol_name("clamav")  # declared by the registry for every filter

SCANNER_UNAVAILABLE = Reply(451, "4.7.1", "Virus scanner unavailable, try again later")
TOO_BIG_TEMPORARY = Reply(452, "4.3.4", "Message too large for the virus scanner")
TOO_BIG_PERMANENT = Reply(552, "5.3.4", "Message too large for the virus scanner")

_UNPRINTABLE_RE = re.compile(r"[^\x21-\x7e]")


def shown_signature(name: str, limit: int = 100) -> str:
    """A signature name safe for one SMTP reply line: printable ASCII, bounded."""
    return _UNPRINTABLE_RE.sub("?", name)[:limit] or "unknown"


def virus_reply(signature: str) -> Reply:
    return Reply(554, "5.7.1", f"Virus found: {shown_signature(signature)}")


def is_virus(tx: TransactionContext) -> bool:
    """True when the transaction was refused because clamd found a virus."""
    return tx.final is not None and tx.final.symbol.name == VIRUS_SYMBOL


class ClamAVFilter(Filter):
    name: ClassVar[str] = "clamav"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec(VIRUS_SYMBOL, 20.0, "clamd found a virus (the reason names it)", "virus"),
        SymbolSpec(UNSCANNED_SYMBOL, 0.0, "Not scanned: larger than max_stream_bytes or "
                   "clamd's StreamMaxLength (oversize policy applied)", "virus"),
    )
    default_on_error: ClassVar[OnError] = OnError.TEMPFAIL
    overrides_accept: ClassVar[bool] = True
    applies_to_relay: ClassVar[bool] = True  # unless scan_outgoing is off
    waits_on_network: ClassVar[bool] = True

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, ClamAVSettings)
        self.cfg = settings
        # Our own deadline ends just before the pipeline's, so a slow clamd gets this
        # filter's reply (451 4.7.1 naming the scanner) rather than the generic timeout.
        deadline = max(settings.timeout - 0.5, settings.timeout * 0.9)
        self.client = ClamdClient(
            settings.address, timeout=deadline, connect_timeout=settings.connect_timeout
        )

    async def check(self, ctx: TransactionContext) -> Verdict:
        if ctx.connection.is_relay and not self.cfg.scan_outgoing:
            return NO_FINDINGS
        content = ctx.content
        if content is None:
            return NO_FINDINGS
        if len(content) > self.cfg.max_stream_bytes:
            return self._oversize(f"{len(content)} octets > max_stream_bytes "
                                  f"{self.cfg.max_stream_bytes}")
        try:
            result = await self.client.instream(content)
        except ClamdSizeLimitExceeded:
            log.warning("tx=%s clamd refused %d octets (StreamMaxLength below "
                        "filters.clamav.max_stream_bytes %d?)", ctx.id, len(content),
                        self.cfg.max_stream_bytes)
            return self._oversize(f"{len(content)} octets > clamd's StreamMaxLength")
        except ClamdUnavailable as exc:
            if not self.services.dry_run:
                notify.notify_background("clamd_down", self.cfg.address,
                                         f"clamd down: {exc}", f"Seen by transaction {ctx.id}.")
            return self._failed(ctx, exc)
        except ClamdError as exc:
            return self._failed(ctx, exc)
        if result.signature is None:
            return NO_FINDINGS
        signature = shown_signature(result.signature)
        log.info("tx=%s virus %s", ctx.id, signature)
        if not self.services.dry_run:
            notify.notify_background(
                "virus", signature, f"virus {signature} refused from {ctx.connection.peer_ip}",
                f"Transaction {ctx.id}: from <{ctx.mail_from}> to {', '.join(ctx.rcpt_tos)}, "
                f"client {ctx.connection.peer_ip} (HELO {ctx.connection.helo or '-'}).",
            )
        return self.reject(VIRUS_SYMBOL, signature, virus_reply(signature), force=True)

    def _oversize(self, reason: str) -> Verdict:
        policy = self.cfg.oversize
        if policy == "skip":
            return self.found(self.hit(UNSCANNED_SYMBOL, reason))
        decision = Decision.TEMPFAIL if policy == "tempfail" else Decision.REJECT
        reply = TOO_BIG_TEMPORARY if policy == "tempfail" else TOO_BIG_PERMANENT
        # Forced: the operator chose not to let unscanned mail through, whitelist or not.
        return Verdict(final=Final(decision, self.hit(UNSCANNED_SYMBOL, reason), reply,
                                   force=True))

    def _failed(self, ctx: TransactionContext, exc: ClamdError) -> Verdict:
        log.warning("tx=%s clamav: %s (on_error=%s)", ctx.id, exc, self.on_error.value)
        ctx.filter_errors += 1
        symbol = Symbol(ERROR_SYMBOL, 0.0, str(exc)[:200])
        if self.on_error is OnError.FAIL_OPEN:
            return Verdict(symbols=(symbol,))
        return Verdict(final=Final(Decision.TEMPFAIL, symbol, SCANNER_UNAVAILABLE, force=True))
