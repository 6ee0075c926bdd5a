"""Train until mature: the corrections users would send, found in the corpus itself (pure).

In use, a ham the filter blocked comes back through notspam@ or a release and counts
four times, a spam it let through comes back through spam@ and counts twice. A rebuild
can find most of those messages before any user has to: each corpus message is scored
leave-one-out (the counts without its own contribution, so it is judged like a message
never seen), and a ham scoring at or above `ham_limit` or a spam below `spam_limit` is
counted `ham_factor` / `spam_factor` times as much, as if a user had reported it. The
next round scores again with the new counts; messages still on the wrong side gain again,
up to `max_weight`. It is a form of train-until-mature (CRM114's TUNE): the counts of the
ordinary messages stay, the ones near the boundary get the weight that pulls it in.

The raised weights live only in the token counts, not in the ledger: learning between
rebuilds adds and takes off ledger weights, so a correction of a matured message leaves
the extra weight in the counts until the next rebuild, which starts again from the
ledger.

On the SpamAssassin public corpus (benchmarks/bayes_accuracy.py, seeds 1-5) three rounds
took the false-negative rate at 0.25% false positives from 4.17% to 2.68%: the commercial
ham that users asked for weighs enough to stop looking like spam.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.classifier.model import DEFAULT_MODEL, ModelSettings, combine, token_probability


@dataclass(frozen=True, slots=True)
class MaturingSettings:
    rounds: int = 3  # 0: counts are the ledger's weights alone
    ham_limit: float = 0.2  # a ham scoring this or more is strengthened
    spam_limit: float = 0.8  # a spam scoring less is strengthened
    ham_factor: int = 4  # like a false positive reported through notspam@
    spam_factor: int = 2  # like a false negative reported through spam@
    max_weight: int = 64
    # Fewer messages of either label than this: no maturing. Leave-one-out on a handful
    # of messages mostly finds the odd one out, and the filter is unsure there anyway.
    min_messages: int = 50


DEFAULT_MATURING = MaturingSettings()


def leave_one_out_cells(
    cells: Iterable[Sequence[int]], spam: bool, weight: int, nspam: int, nham: int,
    model: ModelSettings = DEFAULT_MODEL,
) -> float:
    """The probability of a learned message scored with its own `weight` taken off the
    counts: `cells` are the (spam, ham) counts of its tokens, `nspam`/`nham` the totals,
    all including it."""
    if spam:
        nspam -= weight
    else:
        nham -= weight
    lowest = model.min_strength
    clues: list[float] = []
    for s, h in cells:
        if spam:
            s -= weight
        else:
            h -= weight
        if s <= 0 and h <= 0:
            continue
        f = token_probability(s, h, nspam, nham, model)
        if abs(f - 0.5) >= lowest:
            clues.append(f)
    clues.sort(key=lambda f: abs(f - 0.5), reverse=True)
    return combine(clues[: model.max_clues])[0]


def corrected_weight(
    probability: float, spam: bool, weight: int, first_round: bool, settings: MaturingSettings
) -> int:
    """The message's new weight after one leave-one-out score (unchanged if it was
    judged well enough). The first correction raises a message to the report weight
    (one already reported keeps its weight); later ones multiply it."""
    if spam:
        wrong, factor = probability < settings.spam_limit, settings.spam_factor
    else:
        wrong, factor = probability >= settings.ham_limit, settings.ham_factor
    if not wrong:
        return weight
    raised = max(weight, factor) if first_round else weight * factor
    return min(raised, max(settings.max_weight, weight))
