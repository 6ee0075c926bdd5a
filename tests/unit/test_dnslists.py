"""DNS list zones: answer codes, bitmasks, refusals, bogus answers, the guard's state,
symbols declared from the configuration, and the settings' validation."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from appliance import metrics
from appliance.config.schema import Config, DNSBLZone, URIBLZone
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.dns import DNSAnswer, DNSStatus
from appliance.dnslists import ListKind, ZoneGuard, ZoneRule
from appliance.filters.dnsbl import DNSBLFilter, should_look_up
from appliance.filters.registry import build_filters, declared_symbols, validate_scoring
from appliance.services import Services


def answer(*records: str, status: DNSStatus = DNSStatus.OK) -> DNSAnswer:
    return DNSAnswer("x.zone.example", "A", status, tuple(records))


def zen() -> ZoneRule:
    return ZoneRule(DNSBLZone(zone="zen.example", label="zen", weight=2, codes={
        "127.0.0.2": {"label": "sbl", "weight": 4},
        "127.0.0.10": {"label": "pbl", "weight": 1.5},
    }), ListKind.DNSBL)


def test_codes_map_to_their_symbols() -> None:
    rule = zen()
    assert [x.symbol for x in rule.interpret(answer("127.0.0.2")).listings] == ["DNSBL_ZEN_SBL"]
    both = rule.interpret(answer("127.0.0.10", "127.0.0.2")).listings
    assert {x.symbol for x in both} == {"DNSBL_ZEN_SBL", "DNSBL_ZEN_PBL"}
    # A code the configuration does not name scores the zone's own weight.
    assert [x.symbol for x in rule.interpret(answer("127.0.0.99")).listings] == ["DNSBL_ZEN"]


def test_negative_failed_refused_and_bogus_answers() -> None:
    rule = zen()
    assert not rule.interpret(answer(status=DNSStatus.NXDOMAIN)).listed
    assert not rule.interpret(answer(status=DNSStatus.NODATA)).listed
    failed = rule.interpret(answer(status=DNSStatus.TIMEOUT))
    assert failed.failure and failed.failure.startswith("timeout") and not failed.listed
    refused = rule.interpret(answer("127.255.255.254"))
    assert refused.refused == "127.255.255.254" and not refused.listed
    bogus = rule.interpret(answer("192.0.2.1", "::1", "garbage"))
    assert not bogus.listed and bogus.bogus == ("192.0.2.1", "::1", "garbage")
    mixed = rule.interpret(answer("192.0.2.1", "127.0.0.2"))
    assert [x.symbol for x in mixed.listings] == ["DNSBL_ZEN_SBL"] and mixed.bogus


def test_bitmask_codes() -> None:
    rule = ZoneRule(URIBLZone(zone="multi.uribl.example", label="multi", bitmask=True,
                              weight=None, codes={
                                  "127.0.0.2": {"label": "black", "weight": 4},
                                  "127.0.0.4": {"label": "grey", "weight": 1},
                                  "127.0.0.8": {"label": "red", "weight": 2},
                              }), ListKind.URIBL)
    symbols = {x.symbol for x in rule.interpret(answer("127.0.0.14")).listings}
    assert symbols == {"URIBL_MULTI_BLACK", "URIBL_MULTI_GREY", "URIBL_MULTI_RED"}
    assert {x.symbol for x in rule.interpret(answer("127.0.0.4")).listings} == {
        "URIBL_MULTI_GREY"}
    # No weight: answers without a known bit are ignored; 127.0.0.1 is a refusal here.
    assert not rule.interpret(answer("127.0.0.16")).listed
    assert rule.interpret(answer("127.0.0.1")).refused == "127.0.0.1"


def test_symbol_specs_and_groups() -> None:
    specs = {s.name: (s.weight, s.group) for s in zen().symbol_specs()}
    assert specs == {"DNSBL_ZEN_SBL": (4, "dnsbl"), "DNSBL_ZEN_PBL": (1.5, "dnsbl"),
                     "DNSBL_ZEN": (2, "dnsbl")}
    default_label = ZoneRule(DNSBLZone(zone="b.barracuda-central.example"), ListKind.DNSBL)
    assert default_label.symbol == "DNSBL_B_BARRACUDA_CENTRAL_EXAMPLE"


def test_ipv6_clients_use_nibbles() -> None:
    name = zen().ip_query(ipaddress.ip_address("2001:db8::1"))
    assert name == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.zen.example"
    assert zen().ip_query(ipaddress.ip_address("192.0.2.9")) == "9.2.0.192.zen.example"


def config_with_zones() -> Config:
    return Config.model_validate({"filters": {
        "dnsbl": {"zones": [{"zone": "zen.example", "label": "zen",
                             "codes": {"127.0.0.2": {"label": "sbl", "weight": 4}}}],
                  "dnswl_zones": [{"zone": "list.dnswl.example", "label": "wl"}]},
        "uribl": {"zones": [{"zone": "dbl.example", "label": "dbl"}]},
    }, "scoring": {"weights": {"DNSBL_ZEN_SBL": 5}, "group_caps": {"dnsbl": 6, "uribl": 4}}})


def test_configured_zones_declare_symbols_and_groups() -> None:
    config = config_with_zones()
    declared = declared_symbols(config=config)
    assert declared["DNSBL_ZEN_SBL"].group == "dnsbl"
    assert declared["DNSWL_WL"].weight == -2 and declared["DNSWL_WL"].group == "dnswl"
    assert declared["URIBL_DBL"].weight == 3
    assert "DNSBL_ZEN_SBL" not in declared_symbols()  # only with the configuration
    validate_scoring(config)  # weights and caps may name the configured symbols
    filters = {f.name: f for f in build_filters(config, Services())}
    assert filters["dnsbl"].weight("DNSBL_ZEN_SBL") == 5  # scoring.weights overrides
    assert {"dnsbl_prefetch", "dnsbl", "uribl"} <= set(filters)


def test_a_weight_for_an_unconfigured_zone_is_an_error() -> None:
    config = Config.model_validate({"scoring": {"weights": {"DNSBL_GONE": 3}}})
    with pytest.raises(ValueError, match="DNSBL_GONE"):
        validate_scoring(config)


@pytest.mark.parametrize(("zone", "message"), [
    ({"zone": "not a zone"}, "invalid zone name"),
    ({"zone": "zen.example", "codes": {"10.0.0.2": {"label": "x", "weight": 1}}},
     "127.0.0.0/8"),
    ({"zone": "zen.example", "label": "bad label!"}, "label"),
    ({"zone": "zen.example", "weight": None}, "give a weight or codes"),
    ({"zone": "zen.example", "weight": -1}, "must not be negative"),
    ({"zone": "zen.example", "codes": {"127.0.0.2": {"label": "a", "weight": 1},
                                       "127.0.0.3": {"label": "A", "weight": 1}}},
     "share the label"),
    ({"zone": "zen.example", "bitmask": True,
      "codes": {"127.0.0.0": {"label": "a", "weight": 1}}}, "bit"),
    ({"zone": "zen.example", "refusal_codes": ["nope"]}, "not an IPv4 address"),
])
def test_bad_zone_settings_name_the_problem(zone: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Config.model_validate({"filters": {"dnsbl": {"zones": [zone]}}})


def test_zone_labels_must_be_unique_and_allow_lists_not_positive() -> None:
    with pytest.raises(ValidationError, match="share the label"):
        Config.model_validate({"filters": {"dnsbl": {"zones": [
            {"zone": "a.example", "label": "x"}, {"zone": "b.example", "label": "X"}]}}})
    with pytest.raises(ValidationError, match="zero or negative"):
        Config.model_validate({"filters": {"dnsbl": {"dnswl_zones": [
            {"zone": "wl.example", "weight": 1}]}}})


def gauge(zone: str) -> float:
    return metrics.DNSBL_ZONE_SUSPENDED.labels(zone)._value.get()


def test_guard_suspends_once_and_resumes_after_the_time() -> None:
    now = [1000.0]
    guard = ZoneGuard(clock=lambda: now[0])
    rule = zen()
    assert guard.usable(rule)
    guard.suspend(rule, "lists everything", 60)
    guard.suspend(rule, "again", 60)  # already suspended: the first reason stays
    assert not guard.usable(rule)
    [entry] = guard.suspended()
    assert (entry.zone, entry.kind, entry.reason) == ("zen.example", "dnsbl", "lists everything")
    assert gauge("zen.example") == 1
    now[0] += 61
    assert guard.usable(rule) and guard.suspended() == []
    assert gauge("zen.example") == 0


def test_guard_forgets_zones_no_longer_configured() -> None:
    guard = ZoneGuard(clock=lambda: 0.0)
    rule = zen()
    guard.suspend(rule, "refused", 60)
    guard.retain([ListKind.URIBL], [])  # another kind's zones: untouched
    assert guard.suspended()
    guard.retain([ListKind.DNSBL, ListKind.DNSWL], [])
    assert guard.suspended() == [] and gauge("zen.example") == 0


def test_private_clients_are_skipped_unless_asked_for() -> None:
    settings = Config().filters.dnsbl
    assert not should_look_up(ipaddress.ip_address("127.0.0.2"), settings)
    assert not should_look_up(ipaddress.ip_address("10.1.2.3"), settings)
    assert should_look_up(ipaddress.ip_address("8.8.8.8"), settings)
    on = settings.model_copy(update={"check_private": True})
    assert should_look_up(ipaddress.ip_address("127.0.0.2"), on)


async def test_without_a_resolver_the_filter_fails_clearly() -> None:
    config = config_with_zones()
    config.filters.dnsbl.check_private = True
    dnsbl = DNSBLFilter(config.filters.dnsbl, {}, config, Services())
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.1"), 1, Listener.INBOUND)
    with pytest.raises(RuntimeError, match="no DNS resolver"):
        await dnsbl.check(TransactionContext(connection=conn))
