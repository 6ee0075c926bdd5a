"""The filter registry: order, declared symbols, build from config, weight validation."""

from __future__ import annotations

import pytest

from appliance.config.schema import Config
from appliance.filters.base import Filter
from appliance.filters.registry import (
    FILTER_CLASSES,
    RED_SYMBOLS,
    build_filters,
    declared_symbols,
    is_red,
    settings_for,
    validate_scoring,
)
from appliance.services import Services
from appliance.verdict import STAGE_ORDER, Mode, Symbol, SymbolSpec


def test_filter_names_are_unique_and_stages_ordered() -> None:
    names = [cls.name for cls in FILTER_CLASSES]
    assert len(names) == len(set(names))
    stages = [STAGE_ORDER.index(cls.stage) for cls in FILTER_CLASSES]
    assert stages == sorted(stages)


def test_every_filter_has_a_settings_section() -> None:
    config = Config()
    for cls in FILTER_CLASSES:
        assert settings_for(cls, config) is not None
    assert settings_for(FILTER_CLASSES[2], config) is config.filters.address_lists


def test_declared_symbols_include_error_symbols() -> None:
    declared = declared_symbols()
    for name in ("IP_DENIED", "IP_ALLOWED", "WHITELISTED", "AUTOWHITELISTED", "NOPROCESSING",
                 "BLACKLISTED", "REDLISTED", "SPAMLOVER", "BOMB_RE", "BOMB_SUBJECT",
                 "WHITE_RE", "RED_RE", "BAD_ATTACHMENT", "ARCHIVE_BOMB", "ARCHIVE_LIMIT",
                 "ARCHIVE_ENCRYPTED", "ARCHIVE_CORRUPT", "MIME_TOO_DEEP",
                 "MIME_TOO_MANY_PARTS", "MESSAGE_SIZE"):
        assert name in declared, name
    for cls in FILTER_CLASSES:
        error = declared[f"{cls.name.upper()}_ERROR"]
        assert error.weight == 0
    assert all(declared[name].group == "red" for name in RED_SYMBOLS)
    assert declared["REDLISTED"].weight == declared["SPAMLOVER"].weight == 0


def test_conflicting_declarations_are_an_error() -> None:
    class Clash(Filter):
        name = "clash"
        stage = FILTER_CLASSES[0].stage
        symbols = (SymbolSpec("IP_DENIED", 1.0, "different"),)

        async def check(self, ctx):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(ValueError, match="IP_DENIED"):
        declared_symbols((*FILTER_CLASSES, Clash))


def test_build_filters_skips_off_and_keeps_order() -> None:
    config = Config()
    config.filters.regex.mode = Mode.OFF
    config.filters.address_lists.mode = Mode.OFF
    filters = build_filters(config, Services.from_config(config))
    assert [f.name for f in filters] == [
        "ip_lists", "personal_blacklist", "size", "attachments", "bayes"]
    assert all(f.services.lists is not None for f in filters)


def test_build_filters_passes_weights() -> None:
    config = Config()
    config.scoring.weights = {"MESSAGE_SIZE": 2.5, "ATTACHMENTS_ERROR": 0.0}
    config.filters.size.max_size = 10
    (size,) = [f for f in build_filters(config, Services()) if f.name == "size"]
    assert size.hit("MESSAGE_SIZE").score == 2.5


def test_unknown_weight_is_an_error_naming_it() -> None:
    config = Config()
    config.scoring.weights = {"BOMB_RE": 2.0, "NO_SUCH_SYMBOL": 1.0}
    with pytest.raises(ValueError, match="NO_SUCH_SYMBOL"):
        build_filters(config, Services())
    with pytest.raises(ValueError, match="NO_SUCH_SYMBOL"):
        validate_scoring(config)


def test_unknown_group_cap_is_an_error() -> None:
    config = Config()
    config.scoring.group_caps = {"regex": 5.0, "nonsense": 1.0}
    with pytest.raises(ValueError, match="nonsense"):
        validate_scoring(config)


def test_is_red() -> None:
    assert is_red([Symbol("BOMB_RE", 1.0), Symbol("RED_RE", 0.0)])
    assert not is_red([Symbol("WHITELISTED", -10.0)])
