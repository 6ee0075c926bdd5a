"""Header and body regular expressions (ASSP bombRe, bombSubjectRe, whiteRe, redRe).

Patterns are compiled once, case-insensitive and multi-line (so `^Subject:` works on the
header text), into RE2 pattern sets that search all of them in one linear-time pass
(`appliance.patterns`). The text searched is bounded: the decoded header block and the
decoded body text (HTML stripped) each at most `max_scan_bytes` characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from appliance import mime
from appliance.config.schema import RegexSettings, WeightedPattern
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.patterns import PatternSet
from appliance.verdict import NO_FINDINGS, Stage, Symbol, SymbolSpec, Verdict

_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class CompiledPatterns:
    patterns: PatternSet
    weights: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def source(self, index: int) -> str:
        return self.patterns.sources[index]


def compile_patterns(patterns: Sequence[WeightedPattern]) -> CompiledPatterns:
    return CompiledPatterns(
        PatternSet([p.pattern for p in patterns]), tuple(p.weight for p in patterns)
    )


def excerpt(match: re.Match[str], limit: int = 40) -> str:
    text = _SPACE_RE.sub(" ", match.group(0)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RegexFilter(Filter):
    name: ClassVar[str] = "regex"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BOMB_RE", 3.0, "A bomb_re pattern matched the headers or body (times "
                   "the pattern's weight)", "regex"),
        SymbolSpec("BOMB_SUBJECT", 3.0, "A bomb_subject_re pattern matched the subject "
                   "(times the pattern's weight)", "regex"),
        SymbolSpec("WHITE_RE", -10.0, "A white_re pattern matched: mail is wanted"),
        SymbolSpec("RED_RE", 0.0, "A red_re pattern matched: mail is redlisted "
                   "(autoresponder), never feeds the autowhitelist or the corpora", "red"),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, RegexSettings)
        self.max_scan = settings.max_scan_bytes
        self.bomb = compile_patterns(settings.bomb_re)
        self.bomb_subject = compile_patterns(settings.bomb_subject_re)
        self.white = compile_patterns(settings.white_re)
        self.red = compile_patterns(settings.red_re)

    async def check(self, ctx: TransactionContext) -> Verdict:
        if not (self.bomb or self.bomb_subject or self.white or self.red):
            return NO_FINDINGS
        msg = ctx.message
        texts: list[str] = []
        if self.bomb or self.white or self.red:
            texts = [mime.headers_text(msg, self.max_scan), mime.text_content(msg, self.max_scan)]
        symbols: list[Symbol] = []
        for index, found in self.bomb.patterns.search_all(texts):
            symbols.append(self.hit(
                "BOMB_RE", f"/{self.bomb.source(index)}/ matched {excerpt(found)!r}",
                self.bomb.weights[index]))
        if self.bomb_subject:
            subject = mime.decoded_header(msg, "Subject")[: self.max_scan]
            for index, found in self.bomb_subject.patterns.search_all([subject]):
                symbols.append(self.hit(
                    "BOMB_SUBJECT",
                    f"/{self.bomb_subject.source(index)}/ matched {excerpt(found)!r}",
                    self.bomb_subject.weights[index]))
        red = self.red.patterns.search_first(texts) if self.red else None
        if red is not None:  # red is red: one mark is enough
            index, found = red
            symbols.append(self.hit(
                "RED_RE", f"/{self.red.source(index)}/ matched {excerpt(found)!r}",
                self.red.weights[index]))
        white = self.white.patterns.search_first(texts) if self.white else None
        if white is not None:
            index, found = white
            accept = self.accept(
                "WHITE_RE", f"/{self.white.source(index)}/ matched {excerpt(found)!r}")
            return Verdict(symbols=tuple(symbols), final=accept.final)
        return self.found(*symbols) if symbols else NO_FINDINGS
