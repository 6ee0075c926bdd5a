"""What the DNSBL and URIBL filters share: symbols from configured zones, asking zones
with the sanity guard, failure handling and the block decision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from appliance.dnslists import GUARD, ListKind, ZoneResult, ZoneRule
from appliance.filters.base import Filter, error_symbol_name
from appliance.scoring import total_score
from appliance.verdict import (
    Decision,
    Final,
    OnError,
    Reply,
    Symbol,
    SymbolSpec,
    Verdict,
)

if TYPE_CHECKING:
    from appliance.config.schema import DNSListSettings, DNSListZone, FilterSettings
    from appliance.context import TransactionContext
    from appliance.dns import Resolver

log = logging.getLogger("postwall.filters.dnslists")


class DNSListUnavailable(RuntimeError):
    """A zone gave no usable answer and on_error is tempfail: the pipeline answers 451."""


@dataclass(frozen=True, slots=True)
class Question:
    rule: ZoneRule
    name: str  # the DNS name asked
    subject: str  # what is looked up (an IP, a domain), for reasons


def zone_rules(zones: Iterable[DNSListZone], kind: ListKind) -> tuple[ZoneRule, ...]:
    return tuple(ZoneRule(zone, kind) for zone in zones)


class DNSListFilter(Filter):
    """A filter asking DNS lists; subclasses say which zones and which questions."""

    waits_on_network: ClassVar[bool] = True
    symbols: ClassVar[tuple[SymbolSpec, ...]] = ()

    @classmethod
    def rules_for(cls, settings: FilterSettings) -> tuple[ZoneRule, ...]:
        raise NotImplementedError

    @classmethod
    def configured_symbols(cls, settings: FilterSettings) -> tuple[SymbolSpec, ...]:
        return tuple(spec for rule in cls.rules_for(settings) for spec in rule.symbol_specs())

    def setup(self) -> None:
        self.list_settings: DNSListSettings = self.settings  # type: ignore[assignment]
        self.rules = self.rules_for(self.settings)
        self.specs = {spec.name: spec for spec in self.configured_symbols(self.settings)}
        GUARD.retain(self.kinds(), [rule.zone for rule in self.rules])

    @classmethod
    def kinds(cls) -> tuple[ListKind, ...]:
        raise NotImplementedError

    def resolver(self) -> Resolver:
        resolver = self.services.resolver
        if resolver is None:
            raise DNSListUnavailable("no DNS resolver available")
        return resolver

    def usable_rules(self) -> list[ZoneRule]:
        return [rule for rule in self.rules if GUARD.usable(rule)]

    def start_probes(
        self, rules: Iterable[ZoneRule], resolver: Resolver
    ) -> list[asyncio.Task[None]]:
        settings = self.list_settings
        tasks = (GUARD.probe(rule, resolver, settings.probe_interval, settings.suspend_seconds)
                 for rule in rules)
        return [task for task in tasks if task is not None]

    async def ask(self, questions: Sequence[Question], resolver: Resolver,
                  probes: Sequence[asyncio.Task[None]]) -> list[tuple[Question, ZoneResult]]:
        """Every question's meaning, after the due probes: a zone the probe suspended, or
        that answered a refusal code, drops out instead of scoring."""
        answers = await asyncio.gather(*(resolver.query(q.name, "A") for q in questions))
        if probes:
            await asyncio.wait(probes)  # never cancels them: other sessions share them
        results = []
        for question, answer in zip(questions, answers, strict=True):
            rule = question.rule
            if not GUARD.usable(rule):
                continue
            result = rule.interpret(answer)
            if result.refused is not None:
                GUARD.suspend(rule, f"answered {result.refused} for {question.subject}: the "
                              "resolver is refused or rate-limited",
                              self.list_settings.suspend_seconds)
                continue
            if result.bogus:
                GUARD.note_bogus(rule, result.bogus)
            results.append((question, result))
        # A zone suspended by a later answer must not score from an earlier one.
        return [(q, r) for q, r in results if GUARD.usable(q.rule)]

    def failed_zones(self, ctx: TransactionContext, failures: Sequence[str]) -> Symbol:
        """The zero-score NAME_ERROR symbol for zones without an answer; raises instead
        when on_error is tempfail, so the pipeline answers 451."""
        reason = "; ".join(failures)
        log.warning("tx=%s %s: no answer from %s (on_error=%s)", ctx.id, self.name, reason,
                    self.on_error.value)
        if self.on_error is OnError.TEMPFAIL:
            raise DNSListUnavailable(reason)
        ctx.filter_errors += 1
        return Symbol(error_symbol_name(self.name), 0.0, reason[:200])

    def judged(self, symbols: list[Symbol], reply_for: Callable[[Symbol], Reply]) -> Verdict:
        """The symbols, or a reject carrying the strongest one when the score this check
        adds (groups capped as in scoring) reaches reject_score. Score mode and test
        mode turn the reject back into its symbol in the pipeline."""
        threshold = self.list_settings.reject_score
        hits = [s for s in symbols if s.name in self.specs]
        if threshold is None or not hits:
            return Verdict(symbols=tuple(symbols))
        total = total_score(hits, self.specs, self.config.scoring.group_caps)
        if total < threshold:
            return Verdict(symbols=tuple(symbols))
        strongest = max(hits, key=lambda s: s.score)
        rest = tuple(s for s in symbols if s is not strongest)
        return Verdict(symbols=rest, final=Final(Decision.REJECT, strongest, reply_for(strongest)))
