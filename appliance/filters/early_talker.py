"""Early talker (postscreen's pregreet test), judged at the greeting stage.

With `greeting_delay` set, the session holds the 220 greeting back (see
`PostwallSMTP.wait_before_greeting`); a client that sends anything before it does not
wait for the server as SMTP requires: typically a spam bot. What it sent is kept aside,
never read as commands, and recorded in `ConnectionContext.pregreet`. In block mode the
client gets 554 5.5.0 at once; in score mode EARLY_TALKER adds its weight to every
message of the connection. Either way the penalty box counts it (points.early_talker).
"""

from __future__ import annotations

from typing import ClassVar

from appliance.config.schema import EarlyTalkerSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

TALKED_FIRST = Reply(554, "5.5.0", "Protocol error: you talked before my greeting")


class EarlyTalkerFilter(Filter):
    name: ClassVar[str] = "early_talker"
    stage: ClassVar[Stage] = Stage.GREETING
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("EARLY_TALKER", 6.0, "Client talked before the SMTP greeting"),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, EarlyTalkerSettings)
        self.greeting_delay = settings.greeting_delay

    async def check(self, ctx: TransactionContext) -> Verdict:
        early = ctx.connection.pregreet
        if not early:
            return NO_FINDINGS
        preview = early[:60].decode("ascii", "replace")
        preview = "".join(c if c.isprintable() else "." for c in preview)
        reason = f"{len(early)} octet(s) before the greeting: {preview}"
        return self.reject("EARLY_TALKER", reason, TALKED_FIRST)

    def describe(self) -> str:
        delay = (
            f"greeting_delay={self.greeting_delay:g}s" if self.greeting_delay
            else "greeting_delay=0: inactive"
        )
        return f"{super().describe()[:-1]}, {delay})"
