"""Domains of the URLs in a message, in URI blocklists (URIBL, SURBL, Spamhaus DBL).

At the data stage the decoded text/plain and text/html parts (base64 and quoted-printable
undone, HTML entities decoded, href/src attributes included) are searched for URLs, at
most `max_scan_bytes` of text per message (`appliance.urls`). Each host is reduced to its
registered domain with the bundled public suffix list, deduplicated, local_domains and
skip_domains dropped, and the first `max_lookups` distinct domains (and, for zones with
`ips`, IP-literal URLs) are asked in every zone as `<domain>.<zone>` A records. A message
with more gets the zero-weight URIBL_LOOKUP_LIMIT symbol naming the limit.

Each zone and return code is one symbol declared from the configuration: `URIBL_<label>`
or `URIBL_<label>_<code label>` (group "uribl", capped by scoring.group_caps.uribl), scored
once per message however many of its domains are listed; the reason names them:
`URIBL_MULTI_BLACK +4 "spam.example, other.example in multi.uribl.test (127.0.0.2)"`.
The sanity guard of `appliance.dnslists` applies (probes with RFC 5782's TEST/INVALID).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from appliance import mime, urls
from appliance.config.schema import URIBLSettings
from appliance.dnslists import ListKind, ZoneRule
from appliance.filters.dnslist_base import DNSListFilter, Question, zone_rules
from appliance.verdict import NO_FINDINGS, Reply, Stage, Symbol, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.config.schema import FilterSettings
    from appliance.context import TransactionContext

LIMIT_SYMBOL = "URIBL_LOOKUP_LIMIT"
TEXT_TYPES = ("text/plain", "text/html")
# The MIME walk's own bounds (as for the other body checks).
MAX_MIME_DEPTH = 50
MAX_MIME_PARTS = 1000
THREAD_ABOVE_BYTES = 64 * 1024


def listed_reply(domain: str, zone: str) -> Reply:
    return Reply(554, "5.7.1", f"Message refused: it links to {domain}, listed in {zone}")


class URIBLFilter(DNSListFilter):
    name: ClassVar[str] = "uribl"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec(LIMIT_SYMBOL, 0.0, "The message names more URL domains than "
                   "filters.uribl.max_lookups; only the first ones were looked up"),
    )

    @classmethod
    def rules_for(cls, settings: FilterSettings) -> tuple[ZoneRule, ...]:
        assert isinstance(settings, URIBLSettings)
        return zone_rules(settings.zones, ListKind.URIBL)

    @classmethod
    def kinds(cls) -> tuple[ListKind, ...]:
        return (ListKind.URIBL,)

    def setup(self) -> None:
        super().setup()
        settings = self.settings
        assert isinstance(settings, URIBLSettings)
        self.cfg = settings
        local = (d[2:] if d.startswith("*.") else d for d in self.config.local_domains)
        self.skip = frozenset((*local, *settings.skip_domains))
        if self.rules:
            urls.warm_up(settings.private_suffixes)

    def targets(self, ctx: TransactionContext, collect_ips: bool) -> urls.URLTargets:
        """Registered domains and IPs of the URLs in the text parts, bounded."""
        collector = urls.TargetCollector(
            self.cfg.max_lookups, self.skip, private_suffixes=self.cfg.private_suffixes,
            collect_ips=collect_ips,
        )
        left = self.cfg.max_scan_bytes
        for info in mime.iter_parts(ctx.message, MAX_MIME_DEPTH, MAX_MIME_PARTS):
            if info.is_multipart or info.content_type not in TEXT_TYPES:
                continue
            data = mime.attachment_payload(info.part, left)
            try:
                charset = info.part.get_content_charset()
            except Exception:  # a broken Content-Type parameter: guess the charset
                charset = None
            text = mime.decode_bytes(data, charset)
            collector.add_text(text, is_html=info.content_type == "text/html")
            left -= len(data)
            if left <= 0 or collector.full:
                break
        return collector.targets

    async def check(self, ctx: TransactionContext) -> Verdict:
        if not self.rules or ctx.content is None:
            return NO_FINDINGS
        resolver = self.resolver()
        rules = self.usable_rules()
        if not rules:
            return NO_FINDINGS
        collect_ips = any(rule.ips for rule in rules)
        if ctx.size > THREAD_ABOVE_BYTES:
            # Searching a large body takes a while (~0.3 s for 500 KB of distinct URLs):
            # in a thread, so the event loop keeps serving the other sessions meanwhile.
            found = await asyncio.to_thread(self.targets, ctx, collect_ips)
        else:
            found = self.targets(ctx, collect_ips)
        if not found:
            return NO_FINDINGS
        probes = self.start_probes(rules, resolver)
        questions = [
            Question(rule, rule.domain_query(domain), domain)
            for domain in found.domains for rule in rules
        ] + [
            Question(rule, rule.ip_query(ip), str(ip))
            for ip in found.ips for rule in rules if rule.ips
        ]
        listed: dict[str, tuple[ZoneRule, list[str], set[str]]] = {}
        failures: dict[str, list[str]] = {}
        for question, result in await self.ask(questions, resolver, probes):
            rule = question.rule
            if result.failure is not None:
                failures.setdefault(rule.zone, []).append(result.failure)
                continue
            for listing in result.listings:
                _, subjects, codes = listed.setdefault(listing.symbol, (rule, [], set()))
                subjects.append(question.subject)
                codes.update(listing.code.split(","))
        symbols: list[Symbol] = [
            self.hit(symbol, f"{', '.join(subjects)} in {rule.zone} ({','.join(sorted(codes))})")
            for symbol, (rule, subjects, codes) in listed.items()
        ]
        if found.truncated:
            symbols.append(self.hit(LIMIT_SYMBOL, f"more than {self.cfg.max_lookups} "
                                    "domains; the first ones were looked up"))
        if failures:
            symbols.append(self.failed_zones(ctx, [
                f"{zone}: {reasons[0]}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1
                                           else "")
                for zone, reasons in failures.items()
            ]))

        def reply_for(symbol: Symbol) -> Reply:
            rule, subjects, _ = listed[symbol.name]
            return listed_reply(subjects[0], rule.zone)

        return self.judged(symbols, reply_for)
