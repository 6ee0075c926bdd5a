"""The token table a proxy classifies against: token -> probability, in memory.

Only tokens that can be clues (at least `min_strength` away from 0.5) are held, so a
lookup per token is one dictionary probe and memory stays proportional to what matters.
`refresh` (called off the event loop) follows the database: a full load on start, after
a rebuild (new generation) or when the message totals drifted; otherwise only the rows
changed since the last learn sequence it saw. The dictionary is replaced as a whole on a
full load, and single keys are updated otherwise, so readers never see a broken table.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from appliance.classifier.model import DEFAULT_MODEL, ModelSettings, token_probability
from appliance.storage.training import TokenRow, Totals, TrainingStore

log = logging.getLogger("postwall.classifier")

DRIFT = 0.05  # reload everything when the totals moved this much since the last load
MAX_INCREMENTAL = 200_000


@dataclass(frozen=True, slots=True)
class TableState:
    spam: int
    ham: int
    tokens: int  # held (strong enough to be clues)
    generation: int
    seq: int


class TokenTable:
    def __init__(self, settings: ModelSettings = DEFAULT_MODEL) -> None:
        self.settings = settings
        self.probabilities: dict[str, float] = {}
        self.spam = 0
        self.ham = 0
        self._loaded: Totals | None = None  # totals at the last full load
        self._seq = -1
        self._lock = threading.Lock()  # one refresh at a time

    @property
    def state(self) -> TableState:
        loaded = self._loaded
        return TableState(self.spam, self.ham, len(self.probabilities),
                          loaded.generation if loaded else -1, self._seq)

    def _probability(self, row: TokenRow, spam: int, ham: int) -> float | None:
        f = token_probability(row.spam, row.ham, spam, ham, self.settings)
        return f if abs(f - 0.5) >= self.settings.min_strength else None

    def refresh(self, store: TrainingStore) -> bool:
        """Catch up with the database; True if anything changed."""
        with self._lock:
            totals = store.totals()
            loaded = self._loaded
            if loaded is None or totals.generation != loaded.generation or _drifted(
                loaded, totals
            ):
                self._load_all(store, totals)
                return True
            if totals.seq == self._seq:
                return False
            rows = store.changes_since(self._seq, MAX_INCREMENTAL)
            if len(rows) >= MAX_INCREMENTAL:
                self._load_all(store, totals)
                return True
            table = self.probabilities
            for row in rows:
                f = self._probability(row, totals.spam, totals.ham)
                if f is None:
                    table.pop(row.token, None)
                else:
                    table[row.token] = f
            self.spam, self.ham, self._seq = totals.spam, totals.ham, totals.seq
            return True

    def _load_all(self, store: TrainingStore, totals: Totals) -> None:
        table: dict[str, float] = {}
        spam, ham = totals.spam, totals.ham
        for batch in store.all_tokens():
            for row in batch:
                f = self._probability(row, spam, ham)
                if f is not None:
                    table[row.token] = f
        self.probabilities = table  # one assignment: readers see the old or the new table
        self.spam, self.ham, self._seq = spam, ham, totals.seq
        self._loaded = totals
        log.info("classifier table loaded: %d clue tokens, %d spam / %d ham learned",
                 len(table), spam, ham)


def _drifted(loaded: Totals, now: Totals) -> bool:
    def moved(before: int, after: int) -> bool:
        return abs(after - before) > max(DRIFT * before, 5)

    return moved(loaded.spam, now.spam) or moved(loaded.ham, now.ham)
