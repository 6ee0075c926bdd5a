"""The filters in pipeline order, their declared symbols, and building them from config.

A filter's settings live under `filters.<name>` unless the class names another section
(`section`), as the recipient lists share `filters.address_lists` with the sender lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from appliance.filters.address_lists import AddressListFilter, RecipientListFilter
from appliance.filters.attachments import AttachmentFilter
from appliance.filters.base import Filter, error_symbol_name
from appliance.filters.bayes import BayesFilter
from appliance.filters.ip_lists import IPListFilter
from appliance.filters.personal_blacklist import PersonalBlacklistFilter
from appliance.filters.regex import RegexFilter
from appliance.filters.size import SizeFilter
from appliance.verdict import Mode, Symbol, SymbolSpec

if TYPE_CHECKING:
    from appliance.config.schema import Config, FilterSettings
    from appliance.services import Services

# Pipeline order (the pipeline groups them by stage, keeping this order within a stage):
# cheap and decisive checks first.
FILTER_CLASSES: tuple[type[Filter], ...] = (
    IPListFilter,
    AddressListFilter,
    RecipientListFilter,
    PersonalBlacklistFilter,
    SizeFilter,
    AttachmentFilter,
    RegexFilter,
    BayesFilter,
)

# Symbols that mark mail as red: it never feeds the autowhitelist or the corpora.
RED_GROUP = "red"
RED_SYMBOLS = frozenset({"REDLISTED", "RED_RE"})


def settings_section(cls: type[Filter]) -> str:
    return getattr(cls, "section", None) or cls.name


def settings_for(cls: type[Filter], config: Config) -> FilterSettings:
    section = settings_section(cls)
    try:
        return getattr(config.filters, section)
    except AttributeError:
        raise ValueError(f"filter {cls.name} has no settings section filters.{section}") from None


def declared_symbols(classes: Iterable[type[Filter]] = FILTER_CLASSES) -> dict[str, SymbolSpec]:
    """Every symbol any filter may emit, including the zero-weight NAME_ERROR symbol the
    pipeline records when a filter fails. Two filters may share a symbol only with an
    identical declaration."""
    declared: dict[str, SymbolSpec] = {}
    owner: dict[str, str] = {}

    def add(spec: SymbolSpec, filter_name: str) -> None:
        known = declared.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(
                f"symbol {spec.name} declared differently by {owner[spec.name]} and {filter_name}"
            )
        declared[spec.name] = spec
        owner.setdefault(spec.name, filter_name)

    for cls in classes:
        for spec in cls.symbols:
            add(spec, cls.name)
        add(SymbolSpec(error_symbol_name(cls.name), 0.0, f"The {cls.name} check failed "
                       "(crash or timeout); its on_error policy applied"), cls.name)
    return declared


def validate_scoring(config: Config, declared: Mapping[str, SymbolSpec] | None = None) -> None:
    """Every weight names a declared symbol and every group cap a declared group; a typo
    in either is an error, not a silently ignored setting."""
    declared = declared_symbols() if declared is None else declared
    unknown = sorted(set(config.scoring.weights) - set(declared))
    if unknown:
        raise ValueError(f"scoring.weights names undeclared symbol(s): {', '.join(unknown)}")
    groups = {spec.group for spec in declared.values() if spec.group}
    unknown = sorted(set(config.scoring.group_caps) - groups)
    if unknown:
        raise ValueError(f"scoring.group_caps names unknown group(s): {', '.join(unknown)}")


def build_filters(
    config: Config,
    services: Services,
    classes: Iterable[type[Filter]] = FILTER_CLASSES,
) -> list[Filter]:
    """Instances of the enabled filters (mode not off), in pipeline order."""
    classes = tuple(classes)
    validate_scoring(config, declared_symbols(classes))
    filters: list[Filter] = []
    for cls in classes:
        settings = settings_for(cls, config)
        if settings.mode is Mode.OFF:
            continue
        filters.append(cls(settings, config.scoring.weights, config, services))
    return filters


def is_red(symbols: Iterable[Symbol]) -> bool:
    """True when the mail is redlisted (REDLISTED or RED_RE among its symbols)."""
    return any(symbol.name in RED_SYMBOLS for symbol in symbols)
