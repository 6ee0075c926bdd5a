"""Score large messages; the hard size limit itself is the SMTP layer's (552)."""

from __future__ import annotations

from typing import ClassVar

from appliance.config.schema import SizeSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Stage, SymbolSpec, Verdict


class SizeFilter(Filter):
    name: ClassVar[str] = "size"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("MESSAGE_SIZE", 1.0, "Message is larger than filters.size.max_size"),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        settings = self.settings
        assert isinstance(settings, SizeSettings)
        if settings.max_size is None or ctx.size <= settings.max_size:
            return NO_FINDINGS
        return self.found(
            self.hit("MESSAGE_SIZE", f"{ctx.size} octets > {settings.max_size}")
        )
