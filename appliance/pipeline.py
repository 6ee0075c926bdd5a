"""Run the filters of one SMTP stage: order, timeout, failure policy, mode and test mode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.context import TransactionContext
from appliance.filters.base import Filter, error_symbol_name
from appliance.verdict import (
    STAGE_ORDER,
    Decision,
    Final,
    Mode,
    OnError,
    Reply,
    Stage,
    Symbol,
    SymbolSpec,
)

log = logging.getLogger("postwall.pipeline")


@dataclass(frozen=True, slots=True)
class StageResult:
    """`final` is set when the stage ends the transaction (reject or tempfail)."""

    final: Final | None = None


CONTINUE = StageResult()


class Pipeline:
    def __init__(
        self,
        filters: Iterable[Filter],
        declared: Mapping[str, SymbolSpec],
        *,
        test_mode: bool = False,
    ) -> None:
        self.filters = [f for f in filters if f.mode is not Mode.OFF]
        self.declared = dict(declared)
        self.test_mode = test_mode
        self.by_stage: dict[Stage, tuple[Filter, ...]] = {
            stage: tuple(f for f in self.filters if f.stage is stage) for stage in STAGE_ORDER
        }

    def describe(self) -> list[str]:
        return [f"{i + 1:2d}. {f.describe()}" for i, f in enumerate(self.ordered())]

    def ordered(self) -> list[Filter]:
        return [f for stage in STAGE_ORDER for f in self.by_stage[stage]]

    async def run(self, stage: Stage, tx: TransactionContext) -> StageResult:
        relay = tx.connection.is_relay
        for filter_ in self.by_stage[stage]:
            if relay and not filter_.applies_to_relay:
                continue
            if tx.accepted_by is not None and not filter_.overrides_accept:
                continue
            final = await self._run_one(filter_, tx)
            if final is None:
                continue
            if final.decision is Decision.ACCEPT:
                tx.accepted_by = filter_.name
                continue
            if tx.accepted_by is not None and not final.force:
                continue
            # Test mode is for trying scoring rules; a virus (a forced final) is no rule.
            if self.test_mode and not final.force:
                tx.blocked_in_test_mode = final
                continue
            tx.final = final
            return StageResult(final)
        return CONTINUE

    async def _run_one(self, filter_: Filter, tx: TransactionContext) -> Final | None:
        try:
            if filter_.waits_on_network:
                async with asyncio.timeout(filter_.timeout):
                    verdict = await filter_.check(tx)
            else:
                verdict = await filter_.check(tx)
        except Exception as exc:  # a broken check must never take the session down
            return self._failed(filter_, tx, exc)
        for symbol in verdict.symbols:
            self._check_declared(filter_, symbol)
            tx.symbols.append(symbol)
        final = verdict.final
        if final is None:
            return None
        self._check_declared(filter_, final.symbol)
        tx.symbols.append(final.symbol)
        if filter_.mode is Mode.SCORE:
            return None
        return final

    def _check_declared(self, filter_: Filter, symbol: Symbol) -> None:
        if symbol.name not in self.declared:
            raise ValueError(f"filter {filter_.name} emitted undeclared symbol {symbol.name}")

    def _failed(self, filter_: Filter, tx: TransactionContext, exc: Exception) -> Final | None:
        reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        log.warning("tx=%s filter %s failed: %s", tx.id, filter_.name, reason,
                    exc_info=not isinstance(exc, TimeoutError))
        symbol = Symbol(error_symbol_name(filter_.name), 0.0, reason[:200])
        tx.symbols.append(symbol)
        tx.filter_errors += 1
        if filter_.on_error is OnError.TEMPFAIL:
            reply = Reply(451, "4.3.0", f"Temporary failure in {filter_.name} check, try later")
            return Final(Decision.TEMPFAIL, symbol, reply, force=True)
        return None
