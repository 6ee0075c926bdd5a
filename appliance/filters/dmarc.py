"""DMARC (RFC 7489): does the RFC5322.From domain's policy accept this message, given
what SPF (MAIL FROM / HELO domain) and DKIM (d=) found?

Runs at the data stage after the DKIM filter and reads both results from `tx.auth`; a
check that is off or did not run counts as "no result". The policy is the `_dmarc` TXT
record of the From domain or, when it has none, of its organizational domain (public
suffix list shipped offline), with sp= for subdomains. pct= sampling is deterministic per
Message-ID. Declared behaviour for odd headers: several From domains are each evaluated
and the strictest outcome counts (RFC 7489 6.6.1 allows it); no From domain at all gives
DMARC_NONE (dmarc=permerror in Authentication-Results). A failure while SPF or DKIM had
a temporary DNS error is DMARC_TEMPERROR, never a reject.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar

from appliance.authresults import AuthResult, DMARCResult
from appliance.config.schema import DOMAIN_RE, DMARCSettings
from appliance.context import TransactionContext
from appliance.dmarc import (
    DMARCRecordError,
    Evaluation,
    Policy,
    evaluate,
    from_domains,
    is_dmarc_record,
    organizational_domain,
    parse_record,
)
from appliance.filters.base import Filter
from appliance.verdict import Mode, Reply, Stage, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.dmarc import DMARCRecord
    from appliance.dns import Resolver

log = logging.getLogger("postwall.filters.dmarc")

MAX_FROM_DOMAINS = 5  # each costs up to two lookups; more From domains are not evaluated

# How bad an outcome is, to pick the strictest of several From domains.
_SEVERITY = {
    "DMARC_PASS": 0, "DMARC_NONE": 1, "DMARC_FAIL_NONE": 2, "DMARC_TEMPERROR": 3,
    "DMARC_FAIL_QUARANTINE": 4, "DMARC_FAIL_REJECT": 5,
}


def symbol_for(evaluation: Evaluation) -> str:
    result = evaluation.result
    if result is AuthResult.PASS:
        return "DMARC_PASS"
    if result is AuthResult.TEMPERROR:
        return "DMARC_TEMPERROR"
    if result is AuthResult.FAIL:
        return {
            Policy.REJECT: "DMARC_FAIL_REJECT",
            Policy.QUARANTINE: "DMARC_FAIL_QUARANTINE",
        }.get(evaluation.disposition or Policy.NONE, "DMARC_FAIL_NONE")
    return "DMARC_NONE"


class DMARCFilter(Filter):
    name: ClassVar[str] = "dmarc"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("DMARC_PASS", -0.5, "DMARC pass: SPF or DKIM aligned with the From domain",
                   "dmarc"),
        SymbolSpec("DMARC_FAIL_REJECT", 8.0, "DMARC fail, the domain asks to reject (refused "
                   "in block mode with honor_reject)", "dmarc"),
        SymbolSpec("DMARC_FAIL_QUARANTINE", 5.0, "DMARC fail, the domain asks to quarantine",
                   "dmarc"),
        SymbolSpec("DMARC_FAIL_NONE", 0.5, "DMARC fail, the domain only monitors (p=none, "
                   "or pct sampled the message out)", "dmarc"),
        SymbolSpec("DMARC_NONE", 0.0, "No (valid) DMARC policy, or no From domain", "dmarc"),
        SymbolSpec("DMARC_TEMPERROR", 0.0, "DMARC could not be evaluated: DNS failed for the "
                   "policy, SPF or DKIM", "dmarc"),
    )
    waits_on_network: ClassVar[bool] = True

    def setup(self) -> None:
        assert isinstance(self.settings, DMARCSettings)
        self.cfg = self.settings
        organizational_domain("example.com")  # load the suffix list now, not in a session

    async def check(self, ctx: TransactionContext) -> Verdict:
        if ctx.content is None:
            return self.found()
        message = ctx.message
        domains = from_domains([str(v) for v in (message.get_all("From") or [])])
        if not domains:
            ctx.auth.dmarc = DMARCResult(AuthResult.PERMERROR, "", reason="no From domain")
            return self.found(self.hit("DMARC_NONE", "no RFC5322.From domain"))
        invalid = next((d for d in domains if not DOMAIN_RE.match(d) or "." not in d), None)
        if invalid is not None:
            ctx.auth.dmarc = DMARCResult(AuthResult.PERMERROR, invalid[:100],
                                         reason="invalid From domain")
            return self.found(self.hit("DMARC_NONE", f"invalid From domain {invalid[:100]!r}"))
        sample_key = str(message.get("Message-ID") or ctx.id).strip()
        evaluations = await asyncio.gather(
            *(self._evaluate(domain, ctx, sample_key) for domain in domains[:MAX_FROM_DOMAINS])
        )
        worst = max(evaluations, key=lambda e: _SEVERITY[symbol_for(e)])
        ctx.auth.dmarc = DMARCResult(
            worst.result, worst.from_domain,
            worst.policy.value if worst.policy else "",
            worst.disposition.value if worst.disposition else "", worst.reason,
        )
        symbol = symbol_for(worst)
        reason = worst.reason
        if len(domains) > 1:
            reason = f"{len(domains)} From domains, strictest: {reason}"
        if symbol == "DMARC_FAIL_REJECT" and self.cfg.honor_reject and self.mode is Mode.BLOCK:
            reply = Reply(550, "5.7.1", f"Message rejected by the DMARC policy of "
                          f"{worst.from_domain} (p=reject)")
            return self.reject(symbol, reason, reply)
        return self.found(self.hit(symbol, reason))

    async def _evaluate(self, domain: str, ctx: TransactionContext, sample_key: str
                        ) -> Evaluation:
        resolver = self.services.resolver
        if resolver is None:  # no DNS where none may be asked (unit tests)
            return Evaluation(AuthResult.TEMPERROR, domain, reason="no DNS resolver")
        found = await self._discover(resolver, domain)
        if isinstance(found, Evaluation):
            return found
        record, policy_domain = found
        auth = ctx.auth
        return evaluate(record, domain, policy_domain, auth.spf, auth.dkim, sample_key)

    async def _discover(self, resolver: Resolver, domain: str
                        ) -> tuple[DMARCRecord, str] | Evaluation:
        """RFC 7489 6.6.3: the From domain's record, else the organizational domain's."""
        organizational = organizational_domain(domain)
        for policy_domain in dict.fromkeys((domain, organizational)):
            name = f"_dmarc.{policy_domain}"
            answer = await resolver.txt(name)
            if answer.is_failure:
                return Evaluation(AuthResult.TEMPERROR, domain,
                                  reason=f"{name}: {answer.status.value}")
            records = [r for r in answer.records if is_dmarc_record(r)] if answer.ok else []
            if len(records) > 1:
                return Evaluation(AuthResult.PERMERROR, domain,
                                  reason=f"{name}: {len(records)} DMARC records")
            if records:
                try:
                    return parse_record(records[0]), policy_domain
                except DMARCRecordError as exc:
                    return Evaluation(AuthResult.PERMERROR, domain, reason=f"{name}: {exc}")
        return Evaluation(AuthResult.NONE, domain, reason=f"{domain}: no DMARC record")
