"""Turn symbols into a total and the total into an action (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.config.schema import ScoringSettings
from appliance.verdict import Action, Symbol, SymbolSpec


@dataclass(frozen=True, slots=True)
class Score:
    total: float
    action: Action


def total_score(
    symbols: Iterable[Symbol],
    declared: Mapping[str, SymbolSpec],
    group_caps: Mapping[str, float],
) -> float:
    """Sum the scores; a group's positive total is capped (rspamd's group max_score)."""
    ungrouped = 0.0
    groups: dict[str, float] = {}
    for symbol in symbols:
        spec = declared.get(symbol.name)
        group = spec.group if spec is not None else None
        if group is not None and group in group_caps:
            groups[group] = groups.get(group, 0.0) + symbol.score
        else:
            ungrouped += symbol.score
    capped = sum(min(value, group_caps[group]) for group, value in groups.items())
    return round(ungrouped + capped, 3)


def action_for(total: float, settings: ScoringSettings) -> Action:
    thresholds = settings.thresholds
    for action, threshold in (
        (Action.REJECT, thresholds.reject),
        (Action.DISCARD, thresholds.discard),
        (Action.QUARANTINE, thresholds.quarantine),
        (Action.TAG, thresholds.tag),
    ):
        if threshold is not None and total >= threshold:
            return action
    return Action.DELIVER


def score(
    symbols: Iterable[Symbol],
    declared: Mapping[str, SymbolSpec],
    settings: ScoringSettings,
) -> Score:
    total = total_score(symbols, declared, settings.group_caps)
    return Score(total, action_for(total, settings))
