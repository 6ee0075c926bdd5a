"""The penalty box at connect: clients with a bad recent history are refused.

The score (see `appliance.penalty`) grows with rejected recipients, DNS blocklist
listings, viruses, protocol errors, smuggling attempts, early talking and blocked
messages, and halves every `half_life`. It is judged at connect rather than at RCPT: a
client in the box costs no further work (no HELO, DNS or downstream), and a 421 makes a
real mail server retry later, by when the score has decayed.
"""

from __future__ import annotations

from typing import ClassVar

from appliance.config.schema import PenaltyBoxSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

PENALTY_TEMPFAIL = Reply(421, "4.7.0", "Too many errors or spam from your address, try later")
PENALTY_REJECT = Reply(554, "5.7.1", "Your address is blocked for sending spam or errors")
REPORT_FROM = 1.0  # smaller scores are noise: no PENALTY_SCORE symbol below this


class PenaltyBoxFilter(Filter):
    """Clients above `tempfail_score` get 421 4.7.0, above `reject_score` 554 5.7.1;
    below, PENALTY_SCORE adds its weight scaled by score / tempfail_score. The relay
    listener, relay_networks and ip_allow clients are exempt."""

    name: ClassVar[str] = "penalty_box"
    stage: ClassVar[Stage] = Stage.CONNECT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("PENALTY_BOX", 5.0, "Client address is in the penalty box (refused)"),
        SymbolSpec(
            "PENALTY_SCORE", 3.0,
            "Client address has a penalty score (weight scaled by score / tempfail_score)",
        ),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, PenaltyBoxSettings)
        self.tempfail_score = settings.tempfail_score
        self.reject_score = settings.reject_score

    async def check(self, ctx: TransactionContext) -> Verdict:
        state = self.services.clients
        if state is None or state.is_exempt(ctx.connection):
            return NO_FINDINGS
        score = state.penalty.score(state.key_of(ctx.connection))
        if score < REPORT_FROM:
            return NO_FINDINGS
        scaled = self.hit(
            "PENALTY_SCORE", f"score {score:.1f} (tempfail at {self.tempfail_score:g})",
            factor=min(score / self.tempfail_score, 1.0),
        )
        if self.reject_score is not None and score >= self.reject_score:
            final = self.reject(
                "PENALTY_BOX", f"score {score:.1f} >= reject_score {self.reject_score:g}",
                PENALTY_REJECT,
            )
        elif score >= self.tempfail_score:
            final = self.tempfail(
                "PENALTY_BOX", f"score {score:.1f} >= tempfail_score {self.tempfail_score:g}",
                PENALTY_TEMPFAIL,
            )
        else:
            return self.found(scaled)
        return Verdict(symbols=(scaled,), final=final.final)
