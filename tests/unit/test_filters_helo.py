"""HELO validation: the pure parser and the checks that need no DNS."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.helo import HeloFilter, HeloForm, parse_helo
from appliance.filters.registry import build_filters, settings_for
from appliance.services import Services
from appliance.verdict import Decision, Mode, Reply


@pytest.mark.parametrize(("text", "form", "detail"), [
    ("mail.example.net", HeloForm.DOMAIN, "mail.example.net"),
    ("MAIL.Example.NET.", HeloForm.DOMAIN, "mail.example.net"),
    ("localhost", HeloForm.DOMAIN, "localhost"),
    ("xn--bcher-kva.example", HeloForm.DOMAIN, "xn--bcher-kva.example"),
    ("bücher.example", HeloForm.DOMAIN, "xn--bcher-kva.example"),
    ("[192.0.2.1]", HeloForm.ADDRESS_LITERAL, "192.0.2.1"),
    ("[IPv6:2001:db8::1]", HeloForm.ADDRESS_LITERAL, "2001:db8::1"),
    ("[ipv6:::ffff:192.0.2.1]", HeloForm.ADDRESS_LITERAL, "192.0.2.1"),
    ("192.0.2.1", HeloForm.BARE_IP, "192.0.2.1"),
    ("2001:db8::1", HeloForm.BARE_IP, "2001:db8::1"),
])
def test_valid_forms(text: str, form: HeloForm, detail: str) -> None:
    parsed = parse_helo(text)
    assert parsed.form is form
    assert (parsed.name if form is HeloForm.DOMAIN else str(parsed.ip)) == detail


@pytest.mark.parametrize(("text", "problem"), [
    ("host_name.example", "not a valid domain"),
    ("-bad.example", "not a valid domain"),
    ("bad-.example", "not a valid domain"),
    ("two..dots.example", "not a valid domain"),
    ("a" * 64 + ".example", "not a valid domain"),
    ("mail.example.net foo", "white space"),
    ("[192.0.2.1", "unbalanced"),
    ("192.0.2.1]", "unbalanced"),
    ("[]", "unbalanced"),
    ("[192.0.2.256]", "address literal"),
    ("[2001:db8::1]", "address literal"),  # IPv6 needs the IPv6: tag
    ("[mail.example.net]", "address literal"),
    ("1.2.3.999", "numeric top-level"),
    ("01.02.03.04", "numeric top-level"),
    ("IPv6:2001:db8::1", "not a valid domain"),
])
def test_invalid_forms_say_why(text: str, problem: str) -> None:
    parsed = parse_helo(text)
    assert parsed.form is HeloForm.INVALID
    assert problem in parsed.problem


def make(config: Config) -> HeloFilter:
    return HeloFilter(settings_for(HeloFilter, config), config.scoring.weights, config,
                      Services.from_config(config))


def base_config(**helo: object) -> Config:
    config = Config(
        local_domains=["example.com", "*.corp.example"],
        relay_networks=["10.0.0.0/8"],
        smtp={"hostname": "gw.postwall.example"},
        listen={"inbound": "192.0.2.25:25", "relay": "0.0.0.0:225"},
    )
    for key, value in helo.items():
        setattr(config.filters.helo, key, value)
    return config


def tx(helo: str, ip: str = "203.0.113.7", local: str | None = "198.51.100.25",
       listener: Listener = Listener.INBOUND) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address(ip), 40000, listener, helo=helo)
    conn.local_ip = ipaddress.ip_address(local) if local else None
    return TransactionContext(connection=conn)


async def names(helo: str, **kwargs: object) -> list[str]:
    verdict = await make(base_config()).check(tx(helo, **kwargs))  # type: ignore[arg-type]
    assert verdict.final is None
    return [s.name for s in verdict.symbols]


@pytest.mark.parametrize(("helo", "expected"), [
    ("mail.partner.example", []),
    ("[203.0.113.7]", []),  # the client's own literal
    ("localhost", ["HELO_NOT_FQDN"]),
    ("gw.postwall.example", ["HELO_FORGED"]),
    ("GW.Postwall.Example.", ["HELO_FORGED"]),
    ("example.com", ["HELO_FORGED"]),
    ("mail.example.com", ["HELO_FORGED"]),  # a name under a local domain
    ("x.corp.example", ["HELO_FORGED"]),  # a wildcard local domain
    ("example.com.evil.example", []),
    ("notexample.com", []),
    ("[192.0.2.99]", ["HELO_LITERAL_MISMATCH"]),
    ("[198.51.100.25]", ["HELO_FORGED", "HELO_LITERAL_MISMATCH"]),  # the address we took it on
    ("[192.0.2.25]", ["HELO_FORGED", "HELO_LITERAL_MISMATCH"]),  # a configured listener
    ("203.0.113.7", ["HELO_BARE_IP"]),
    ("192.0.2.25", ["HELO_BARE_IP", "HELO_FORGED"]),
    ("host_1.partner.example", ["HELO_INVALID"]),
])
async def test_findings(helo: str, expected: list[str]) -> None:
    assert await names(helo) == expected


async def test_clients_in_relay_networks_may_use_our_names() -> None:
    assert await names("mail.example.com", ip="10.1.2.3") == []
    assert await names("[198.51.100.25]", ip="10.1.2.3") == ["HELO_LITERAL_MISMATCH"]


async def test_ipv6_literal_and_mapped_client() -> None:
    assert await names("[IPv6:2001:db8::7]", ip="2001:db8::7") == []
    assert await names("[IPv6:2001:db8::8]", ip="2001:db8::7") == ["HELO_LITERAL_MISMATCH"]


async def test_relay_listener_and_missing_helo_are_not_judged() -> None:
    flt = make(base_config())
    assert (await flt.check(tx("localhost", listener=Listener.RELAY))).symbols == ()
    ctx = tx("x")
    ctx.connection.helo = None
    assert (await flt.check(ctx)).symbols == ()


async def test_reasons_are_printable_and_short() -> None:
    verdict = await make(base_config()).check(tx("bad\x01name" + "x" * 300))
    [symbol] = verdict.symbols
    assert symbol.name == "HELO_INVALID"
    assert "\x01" not in symbol.reason and "\\x01" in symbol.reason
    assert len(symbol.reason) <= 200


async def test_block_mode_refuses_only_listed_symbols() -> None:
    flt = make(base_config(reject=["HELO_FORGED", "HELO_INVALID"]))
    verdict = await flt.check(tx("[198.51.100.25]"))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.symbol.name == "HELO_FORGED"
    assert verdict.final.reply is not None and verdict.final.reply.code == 550
    assert [s.name for s in verdict.symbols] == ["HELO_LITERAL_MISMATCH"]
    invalid = await flt.check(tx("under_score.example"))
    assert invalid.final is not None
    assert invalid.final.reply == Reply(501, "5.5.2", "Invalid HELO/EHLO name (RFC 5321 4.1.1.1)")
    assert (await flt.check(tx("localhost"))).final is None


def test_unknown_reject_symbol_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="HELO_FORGD"):
        make(base_config(reject=["HELO_FORGD"]))


def test_weights_group_cap_and_default_mode() -> None:
    config = Config()
    assert config.filters.helo.mode is Mode.BLOCK and config.filters.helo.reject == []
    assert config.scoring.group_caps == {"helo": 5.0}
    [helo] = [f for f in build_filters(config, Services()) if f.name == "helo"]
    assert all(spec.group == "helo" for spec in helo.symbols)


async def test_check_dns_without_a_resolver_is_a_no_op() -> None:
    flt = make(base_config(check_dns=True))
    assert (await flt.check(tx("mail.partner.example"))).symbols == ()
