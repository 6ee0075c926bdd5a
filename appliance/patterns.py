"""Many administrator patterns searched in one pass.

RE2's pattern sets scan a text once for all patterns and say which matched (about 40
times faster than one Python `re` search per pattern for a handful of rules), in linear
time, so a badly written rule cannot hang a worker with catastrophic backtracking.
Patterns RE2 cannot run (backreferences, lookaround) fall back to Python's `re`. The
match shown in a symbol's reason always comes from Python's `re`, so a pattern counts
only when both agree it matched (they differ only in corner cases such as Unicode word
boundaries)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import re2

log = logging.getLogger("postwall.patterns")

FLAGS = re.IGNORECASE | re.MULTILINE


class PatternSet:
    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self.python = tuple(re.compile(source, FLAGS) for source in self.sources)
        self._set: re2.Set | None = None
        self._set_index: dict[int, int] = {}
        self.fallback: tuple[int, ...] = ()
        if not self.sources:
            return
        options = re2.Options()
        options.case_sensitive = False
        options.never_nl = False
        pattern_set = re2.Set.SearchSet(options)
        fallback = []
        for index, source in enumerate(self.sources):
            try:
                self._set_index[pattern_set.Add(f"(?m){source}")] = index
            except re2.error:
                log.warning("pattern %r needs Python's re (slower, no backtracking limit)",
                            source)
                fallback.append(index)
        self.fallback = tuple(fallback)
        if self._set_index:
            pattern_set.Compile()
            self._set = pattern_set

    def __bool__(self) -> bool:
        return bool(self.sources)

    def candidates(self, text: str) -> set[int]:
        found: set[int] = set()
        if self._set is not None:
            found.update(self._set_index[i] for i in self._set.Match(text) or ())
        found.update(i for i in self.fallback if self.python[i].search(text))
        return found

    def search_all(self, texts: Sequence[str]) -> list[tuple[int, re.Match[str]]]:
        """Every pattern that matches any of `texts`, with its first match, in order."""
        found: set[int] = set()
        for text in texts:
            found |= self.candidates(text)
        results = []
        for index in sorted(found):
            for text in texts:
                match = self.python[index].search(text)
                if match is not None:
                    results.append((index, match))
                    break
        return results

    def search_first(self, texts: Sequence[str]) -> tuple[int, re.Match[str]] | None:
        results = self.search_all(texts)
        return results[0] if results else None
