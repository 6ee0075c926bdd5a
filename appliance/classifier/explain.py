"""Which tokens decided a message's Bayesian score: shared by `postwall analyze`, the
analyze@ mail command and the web UI's analyzer."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from appliance.classifier.model import ModelSettings, classify
from appliance.classifier.table import TokenTable
from appliance.classifier.tokenizer import TokenizerSettings, tokenize
from appliance.storage.training import TrainingStore


@dataclass(frozen=True, slots=True)
class ClueLine:
    token: str
    probability: float
    spam: int | None  # weighted counts, when the database was asked
    ham: int | None


@dataclass
class Explanation:
    probability: float
    confidence: float
    tokens: int
    known: int
    learned_spam: int
    learned_ham: int
    clues: list[ClueLine] = field(default_factory=list)

    def render(self, limit: int = 30) -> str:
        lines = [
            f"bayes: p={self.probability:.4f} confidence={self.confidence:.2f} "
            f"({self.known} of {self.tokens} tokens known; trained on {self.learned_spam} "
            f"spam / {self.learned_ham} ham)",
        ]
        if not self.clues:
            lines.append("  (no token was a clue)")
            return "\n".join(lines)
        lines.append(f"  {'token':40} {'p(spam)':>8} {'spam':>6} {'ham':>6}")
        for clue in self.clues[:limit]:
            spam = "" if clue.spam is None else str(clue.spam)
            ham = "" if clue.ham is None else str(clue.ham)
            token = clue.token if len(clue.token) <= 40 else clue.token[:37] + "..."
            lines.append(f"  {token:40} {clue.probability:8.4f} {spam:>6} {ham:>6}")
        if len(self.clues) > limit:
            lines.append(f"  ... and {len(self.clues) - limit} weaker clues")
        return "\n".join(lines)


def explain(
    message: Message, table: TokenTable, tokenizer: TokenizerSettings, model: ModelSettings,
    store: TrainingStore | None = None, limit: int = 30,
) -> Explanation:
    result = classify(tokenize(message, tokenizer), table.probabilities, model)
    top = result.clues[:limit]
    counts = store.counts(c.token for c in top) if store is not None else {}
    return Explanation(
        probability=result.probability,
        confidence=result.confidence,
        tokens=result.tokens,
        known=result.known,
        learned_spam=table.spam,
        learned_ham=table.ham,
        clues=[
            ClueLine(c.token, c.probability, *counts.get(c.token, (None, None)))
            for c in result.clues
        ],
    )
