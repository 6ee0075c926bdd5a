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
from appliance.config.schema import RegexSettings, WeightedPattern, file_ref
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.listfiles import Kind, ListFiles
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


def compile_patterns(
    patterns: Sequence[WeightedPattern], files: ListFiles | None = None
) -> CompiledPatterns:
    """One set from the configured patterns; a `file:` pattern stands for the patterns
    in force from that file (its weight multiplies each line's `=>weight`)."""
    sources: list[str] = []
    weights: list[float] = []
    for p in patterns:
        path = file_ref(p.pattern)
        if path is None:
            sources.append(p.pattern)
            weights.append(p.weight)
            continue
        loaded = files.get(path, Kind.PATTERN) if files is not None else None
        if loaded is not None:
            sources.extend(loaded.entries)
            weights.extend(p.weight * w for w in loaded.weights)
    return CompiledPatterns(PatternSet(sources), tuple(weights))


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
        self._compile()

    def _compile(self) -> None:
        settings = self.settings
        assert isinstance(settings, RegexSettings)
        files = self.services.list_files
        self._generation = files.generation if files is not None else 0
        self.bomb = compile_patterns(settings.bomb_re, files)
        self.bomb_subject = compile_patterns(settings.bomb_subject_re, files)
        self.white = compile_patterns(settings.white_re, files)
        self.red = compile_patterns(settings.red_re, files)

    async def check(self, ctx: TransactionContext) -> Verdict:
        files = self.services.list_files
        if files is not None and files.generation != self._generation:
            self._compile()  # a pattern file changed (rare; one RE2 set compile)
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
