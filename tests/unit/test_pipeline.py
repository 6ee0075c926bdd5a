"""The pipeline's contract: order, modes, timeouts, failure policy, accept and force."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import ClassVar

import pytest

from appliance.config.schema import Config, FilterSettings
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.base import Filter
from appliance.filters.registry import declared_symbols
from appliance.pipeline import Pipeline
from appliance.services import Services
from appliance.verdict import Decision, Mode, OnError, Reply, Stage, SymbolSpec, Verdict


class Probe(Filter):
    """A check whose behaviour the test chooses: the pipeline is what is under test."""

    name = "probe"
    stage = Stage.DATA
    waits_on_network = True  # so that the "slow" behaviour is timed out
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("PROBE_HIT", 2.0, "hit"),
        SymbolSpec("PROBE_OK", -10.0, "welcome"),
        SymbolSpec("PROBE_VIRUS", 0.0, "virus"),
    )
    behaviour = "hit"

    async def check(self, ctx: TransactionContext) -> Verdict:
        if self.behaviour == "hit":
            return self.found(self.hit("PROBE_HIT", "seen"))
        if self.behaviour == "accept":
            return self.accept("PROBE_OK", "friend")
        if self.behaviour == "reject":
            return self.reject("PROBE_HIT", "bad", Reply(550, "5.7.1", "go away"))
        if self.behaviour == "virus":
            return self.reject("PROBE_VIRUS", "Eicar", Reply(554, "5.7.1", "virus"), force=True)
        if self.behaviour == "slow":
            await asyncio.sleep(5)
        if self.behaviour == "undeclared":
            return self.found(self.hit("NOT_DECLARED"))
        raise RuntimeError("boom")


def make(behaviour: str, *, mode: Mode = Mode.BLOCK, on_error: OnError | None = None,
         timeout: float = 1.0, name: str = "probe") -> Filter:
    cls = type(f"Probe_{behaviour}_{name}", (Probe,), {"behaviour": behaviour, "name": name})
    settings = FilterSettings(mode=mode, timeout=timeout, on_error=on_error)
    return cls(settings, {}, Config(), Services())


def declared(*filters: Filter) -> dict:
    return declared_symbols(type(f) for f in filters)


def tx(listener: Listener = Listener.INBOUND) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.1"), 1, listener)
    return TransactionContext(connection=conn, content=b"\r\n")


async def test_symbols_accumulate_in_order():
    filters = [make("hit", name="one"), make("hit", name="two")]
    t = tx()
    result = await Pipeline(filters, declared(*filters)).run(Stage.DATA, t)
    assert result.final is None
    assert [s.name for s in t.symbols] == ["PROBE_HIT", "PROBE_HIT"]


async def test_block_mode_reject_stops_the_stage_and_score_mode_only_scores():
    blocker = make("reject", name="one")
    after = make("hit", name="two")
    t = tx()
    result = await Pipeline([blocker, after], declared(blocker, after)).run(Stage.DATA, t)
    assert result.final.decision is Decision.REJECT
    assert [s.name for s in t.symbols] == ["PROBE_HIT"]

    scorer = make("reject", mode=Mode.SCORE, name="one")
    t = tx()
    result = await Pipeline([scorer, after], declared(scorer, after)).run(Stage.DATA, t)
    assert result.final is None
    assert len(t.symbols) == 2


async def test_accept_skips_later_checks_but_a_virus_still_wins():
    friend = make("accept", name="one")
    scorer = make("hit", name="two")
    virus = make("virus", name="three")
    virus.overrides_accept = True
    pipeline = Pipeline([friend, scorer, virus], declared(friend, scorer, virus))
    t = tx()
    result = await pipeline.run(Stage.DATA, t)
    assert t.accepted_by == "one"
    assert "PROBE_HIT" not in [s.name for s in t.symbols]
    assert result.final is not None and result.final.reply.code == 554


@pytest.mark.parametrize("behaviour", ["crash", "slow"])
async def test_failures_follow_on_error(behaviour):
    open_filter = make(behaviour, on_error=OnError.FAIL_OPEN, timeout=0.05)
    t = tx()
    result = await Pipeline([open_filter], declared(open_filter)).run(Stage.DATA, t)
    assert result.final is None
    [symbol] = t.symbols
    assert symbol.name == "PROBE_ERROR" and symbol.score == 0
    assert ("timeout" in symbol.reason) == (behaviour == "slow")

    closed = make(behaviour, on_error=OnError.TEMPFAIL, timeout=0.05)
    t = tx()
    result = await Pipeline([closed], declared(closed)).run(Stage.DATA, t)
    assert result.final.decision is Decision.TEMPFAIL
    assert str(result.final.reply).startswith("451 4.3.0")


async def test_undeclared_symbols_are_errors_not_scores():
    broken = make("undeclared")
    t = tx()
    result = await Pipeline([broken], declared(broken)).run(Stage.DATA, t)
    assert [s.name for s in t.symbols] == ["PROBE_ERROR"]
    assert "undeclared" in t.symbols[0].reason
    assert result.final is None


async def test_test_mode_remembers_the_block_instead_of_applying_it():
    blocker = make("reject")
    t = tx()
    result = await Pipeline([blocker], declared(blocker), test_mode=True).run(Stage.DATA, t)
    assert result.final is None
    assert t.blocked_in_test_mode is not None


async def test_test_mode_still_enforces_a_forced_block():
    virus = make("virus")
    t = tx()
    result = await Pipeline([virus], declared(virus), test_mode=True).run(Stage.DATA, t)
    assert result.final is not None and result.final.symbol.name == "PROBE_VIRUS"
    assert t.blocked_in_test_mode is None


async def test_relay_mail_skips_filters_that_do_not_apply_to_it():
    scorer = make("hit")
    t = tx(Listener.RELAY)
    await Pipeline([scorer], declared(scorer)).run(Stage.DATA, t)
    assert t.symbols == []


def test_off_filters_are_not_in_the_pipeline():
    off = make("hit", mode=Mode.OFF)
    assert Pipeline([off], declared(off)).ordered() == []
