"""Token probabilities (Robinson) and their combination (Fisher's chi-square), pure.

For a token seen in `spam` of `nspam` spam messages and `ham` of `nham` ham messages
(weighted counts), Robinson's degree of belief that a message containing it is spam is

    p = (spam / nspam) / (spam / nspam + ham / nham)
    f = (s * x + n * p) / (s + n)          n = spam + ham, x = 0.5, s = strength

so that a token seen once is only mildly telling. The `max_clues` tokens whose f lies
farthest from 0.5 (at least `min_strength` away) are combined with Fisher's method in
both directions: S (how strongly the evidence says spam) and H (ham). The probability is
(1 + S - H) / 2 and the confidence |S - H|: both near 1 means the message contradicts
itself, both near 0 means there is little evidence; either way the probability sits near
0.5 and the confidence is low.

Body word pairs (the Markov part) are clues too, but at most `max_pair_clues` of them:
a pair repeats the evidence of its two words, and the boilerplate of a newsletter
("remove yourself", "yourself from", "list click") would otherwise vote many times over
in both directions. The strongest few pairs add what the words alone miss. On the
SpamAssassin corpus (the split of benchmarks/bayes_accuracy.py, seeds 1-5, 11-15 and
21-25, mean false positives / false negatives at p >= 0.5): every pair a clue 0.30% /
2.36%, no pair 0.24% / 2.24%, at most five 0.20% / 2.18%.

With many strong clues both tests saturate (S = H = 1.000) and a tenth of the spam of a
real corpus lands on exactly 0.5 together with the hardest ham. Inside 0.4..0.6 the
probability is therefore taken from the two tail probabilities compared in log space,
which never saturate: 0.5 + 0.1 * tanh(ln(Q_H / Q_S) / 20). It orders that pile (on the
SpamAssassin corpus: 0.3 points fewer false negatives at 0.25% false positives) and
leaves every decision outside it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from appliance.classifier.tokenizer import is_pair

LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    strength: float = 0.16  # s: how much a rarely seen token is pulled towards x
    unknown: float = 0.5  # x: the probability of a token never seen
    min_strength: float = 0.346  # clues must be at least this far from 0.5
    max_clues: int = 150
    max_pair_clues: int = 5  # of them body word pairs (see above)


DEFAULT_MODEL = ModelSettings()


def token_probability(
    spam: float, ham: float, nspam: float, nham: float, settings: ModelSettings = DEFAULT_MODEL
) -> float:
    """Robinson's f(w) for a token with these weighted counts."""
    if spam <= 0 and ham <= 0:
        return settings.unknown
    spam_ratio = spam / nspam if nspam > 0 else 0.0
    ham_ratio = ham / nham if nham > 0 else 0.0
    total = spam_ratio + ham_ratio
    p = spam_ratio / total if total > 0 else settings.unknown
    n = spam + ham
    s = settings.strength
    return (s * settings.unknown + n * p) / (s + n)


SATURATED = 0.1  # |p - 0.5| below this: order by the log tail probabilities
TIE_SCALE = 20.0


def log_chi2q(x2: float, degrees: int) -> float:
    """ln P(chi-square with `degrees` (even) degrees of freedom >= x2), without underflow."""
    m = x2 / 2.0
    if m <= 0:
        return 0.0
    log_m = math.log(m)
    terms = [i * log_m - math.lgamma(i + 1) for i in range(degrees // 2)]
    top = max(terms)
    return min(0.0, -m + top + math.log(sum(math.exp(t - top) for t in terms)))


def chi2q(x2: float, degrees: int) -> float:
    """P(chi-square with `degrees` (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, degrees // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


@dataclass(frozen=True, slots=True)
class Clue:
    token: str
    probability: float


@dataclass(frozen=True, slots=True)
class Classification:
    probability: float  # 0 ham .. 1 spam
    confidence: float  # 0 .. 1
    spam_evidence: float  # S
    ham_evidence: float  # H
    clues: tuple[Clue, ...] = field(default=())  # strongest first
    tokens: int = 0  # distinct tokens in the message

    @property
    def known(self) -> int:
        return len(self.clues)


def combine(probabilities: Iterable[float]) -> tuple[float, float, float]:
    """(probability, S, H) of Fisher's chi-square combination of token probabilities."""
    s_product = h_product = 1.0
    s_exp = h_exp = 0
    count = 0
    frexp = math.frexp
    for f in probabilities:
        count += 1
        s_product *= 1.0 - f
        h_product *= f
        if s_product < 1e-200:
            s_product, e = frexp(s_product)
            s_exp += e
        if h_product < 1e-200:
            h_product, e = frexp(h_product)
            h_exp += e
    if not count:
        return 0.5, 0.0, 0.0
    s_log = math.log(s_product) + s_exp * LN2
    h_log = math.log(h_product) + h_exp * LN2
    spam = 1.0 - chi2q(-2.0 * s_log, 2 * count)
    ham = 1.0 - chi2q(-2.0 * h_log, 2 * count)
    probability = (spam - ham + 1.0) / 2.0
    if abs(probability - 0.5) < SATURATED:
        ratio = log_chi2q(-2.0 * h_log, 2 * count) - log_chi2q(-2.0 * s_log, 2 * count)
        probability = 0.5 + SATURATED * math.tanh(ratio / TIE_SCALE)
    return probability, spam, ham


def strongest_clues(
    found: list[tuple[str, float]], settings: ModelSettings = DEFAULT_MODEL
) -> list[tuple[str, float]]:
    """The clues combined, from (token, f) sorted strongest first: at most `max_clues`,
    of them at most `max_pair_clues` word pairs."""
    chosen: list[tuple[str, float]] = []
    pairs_left = settings.max_pair_clues
    limit = settings.max_clues
    for clue in found:
        if is_pair(clue[0]):
            if pairs_left <= 0:
                continue
            pairs_left -= 1
        chosen.append(clue)
        if len(chosen) >= limit:
            break
    return chosen


def classify(
    tokens: Iterable[str],
    probabilities: Mapping[str, float],
    settings: ModelSettings = DEFAULT_MODEL,
) -> Classification:
    """Classify a message's distinct tokens against a table of token probabilities that
    holds only tokens at least `min_strength` away from 0.5 (see `TokenTable`)."""
    tokens = tokens if isinstance(tokens, list) else list(tokens)
    get = probabilities.get
    found = [(token, f) for token, f in zip(tokens, map(get, tokens), strict=True)
             if f is not None]
    found.sort(key=lambda c: abs(c[1] - 0.5), reverse=True)
    found = strongest_clues(found, settings)
    probability, spam, ham = combine(f for _, f in found)
    return Classification(
        probability=probability,
        confidence=abs(spam - ham),
        spam_evidence=spam,
        ham_evidence=ham,
        clues=tuple(Clue(token, f) for token, f in found),
        tokens=len(tokens),
    )
