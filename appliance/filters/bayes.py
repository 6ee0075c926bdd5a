"""The statistical classifier at DATA: BAYES_* symbols by probability band.

Tokenizing and classifying one message takes about a millisecond against the in-memory
token table (`services.bayes`), so the check runs inline like the other local checks;
the table follows the database in the background (see `appliance.learning_loop`).
"""

from __future__ import annotations

from typing import ClassVar

from appliance.classifier.model import Classification, ModelSettings, classify
from appliance.classifier.tokenizer import TokenizerSettings, client_network_tokens, tokenize
from appliance.config.schema import BayesSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import Stage, SymbolSpec, Verdict

GROUP = "bayes"
# (lowest probability, symbol): SpamAssassin's band names, so operators know them.
BANDS: tuple[tuple[float, str], ...] = (
    (0.999, "BAYES_999"),
    (0.99, "BAYES_99"),
    (0.95, "BAYES_95"),
    (0.80, "BAYES_80"),
    (0.60, "BAYES_60"),
    (0.40, "BAYES_50"),
    (0.20, "BAYES_40"),
    (0.05, "BAYES_20"),
    (0.01, "BAYES_05"),
    (0.0, "BAYES_00"),
)


def band(probability: float) -> str:
    for lowest, name in BANDS:
        if probability >= lowest:
            return name
    return "BAYES_00"


def describe(result: Classification) -> str:
    return (f"p={result.probability:.4f} confidence={result.confidence:.2f} "
            f"clues={result.known}/{result.tokens}")


class BayesFilter(Filter):
    name: ClassVar[str] = "bayes"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("BAYES_999", 5.0, "Statistically spam, p >= 0.999", GROUP),
        SymbolSpec("BAYES_99", 4.0, "Statistically spam, 0.99 <= p < 0.999", GROUP),
        SymbolSpec("BAYES_95", 3.0, "Statistically spam, 0.95 <= p < 0.99", GROUP),
        SymbolSpec("BAYES_80", 2.0, "Probably spam, 0.80 <= p < 0.95", GROUP),
        SymbolSpec("BAYES_60", 1.0, "Leaning to spam, 0.60 <= p < 0.80", GROUP),
        SymbolSpec("BAYES_50", 0.0, "Undecided, 0.40 <= p < 0.60", GROUP),
        SymbolSpec("BAYES_40", -0.5, "Leaning to ham, 0.20 <= p < 0.40", GROUP),
        SymbolSpec("BAYES_20", -1.0, "Probably ham, 0.05 <= p < 0.20", GROUP),
        SymbolSpec("BAYES_05", -1.5, "Statistically ham, 0.01 <= p < 0.05", GROUP),
        SymbolSpec("BAYES_00", -2.0, "Statistically ham, p < 0.01", GROUP),
        SymbolSpec("BAYES_UNSURE", 0.0, "Too little training or too few known tokens to "
                   "judge", GROUP),
    )

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, BayesSettings)
        self.min_spam = settings.min_spam
        self.min_ham = settings.min_ham
        self.min_clues = settings.min_clues
        self.model = model_settings(settings)
        self.tokenizer = tokenizer_settings(settings, self.config.scoring.subject_prefix)

    async def check(self, ctx: TransactionContext) -> Verdict:
        table = self.services.bayes
        if table is None:
            return self.found(self.hit("BAYES_UNSURE", "no classifier database"))
        if table.spam < self.min_spam or table.ham < self.min_ham:
            return self.found(self.hit(
                "BAYES_UNSURE", f"too little training: {table.spam} spam / {table.ham} ham "
                f"learned, {self.min_spam} / {self.min_ham} needed"))
        tokens = tokenize(ctx.message, self.tokenizer)
        known = set(tokens)
        tokens.extend(t for t in client_network_tokens(str(ctx.connection.peer_ip))
                      if t not in known)
        result = classify(tokens, table.probabilities, self.model)
        if result.known < self.min_clues:
            return self.found(self.hit(
                "BAYES_UNSURE", f"only {result.known} known tokens of {result.tokens}"))
        return self.found(self.hit(band(result.probability), describe(result)))


def model_settings(settings: BayesSettings) -> ModelSettings:
    return ModelSettings(strength=settings.strength, min_strength=settings.min_strength,
                         max_clues=settings.max_clues, max_pair_clues=settings.max_pair_clues)


def tokenizer_settings(settings: BayesSettings, subject_prefix: str) -> TokenizerSettings:
    return TokenizerSettings(max_text_chars=settings.max_text_chars,
                             pair_distance=settings.pair_distance, subject_prefix=subject_prefix)
