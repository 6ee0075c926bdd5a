"""Personal blacklists at RCPT: a recipient who blacklisted the sender (persblack@) is
refused for that recipient only; the others in the transaction are not affected.

A personal choice beats the global whitelist: it concerns only the user who made it."""

from __future__ import annotations

from typing import ClassVar

from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict


class PersonalBlacklistFilter(Filter):
    name: ClassVar[str] = "personal_blacklist"
    stage: ClassVar[Stage] = Stage.RCPT
    overrides_accept: ClassVar[bool] = True
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("PERSONAL_BLACKLISTED", 10.0, "The recipient blacklisted the sender "
                   "(persblack@)", "lists"),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        personal = self.services.personal
        if ctx.current_rcpt is None or not ctx.mail_from or personal is None:
            return NO_FINDINGS
        recipient = ctx.current_rcpt.address
        entry = personal.match(recipient, ctx.mail_from)
        if entry is None:
            return NO_FINDINGS
        reply = Reply(550, "5.7.1", f"<{recipient}> does not accept mail from this sender")
        return self.reject("PERSONAL_BLACKLISTED", f"{recipient} blacklisted {entry}", reply,
                           force=True)
