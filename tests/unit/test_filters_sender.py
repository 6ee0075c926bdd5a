"""Sender validation: everything decided before DNS is asked, and null MX recognition."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.dns import DNSAnswer, DNSStatus
from appliance.filters.registry import settings_for
from appliance.filters.sender import SenderFilter, is_null_mx
from appliance.services import Services
from appliance.verdict import Decision, Mode


def make(**settings: object) -> SenderFilter:
    config = Config(local_domains=["example.com", "*.corp.example"],
                    relay_networks=["10.0.0.0/8"])
    for key, value in settings.items():
        setattr(config.filters.sender, key, value)
    return SenderFilter(settings_for(SenderFilter, config), {}, config, Services())


def tx(sender: str, ip: str = "203.0.113.7", listener: Listener = Listener.INBOUND
       ) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address(ip), 1, listener)
    return TransactionContext(connection=conn, mail_from=sender)


@pytest.mark.parametrize(("sender", "problem"), [
    ("postmaster", "no domain"),
    ("user@localhost", "not fully qualified"),
    ("user@exa_mple.net", "not a valid domain"),
    ("user@-x.example", "not a valid domain"),
    ("user@1.2.3.4", "numeric top-level"),
])
async def test_impossible_domains_are_refused_before_dns(sender: str, problem: str) -> None:
    verdict = await make().check(tx(sender))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.symbol.name == "SENDER_DOMAIN_INVALID"
    assert problem in verdict.final.symbol.reason
    assert verdict.final.reply is not None
    assert (verdict.final.reply.code, verdict.final.reply.enhanced) == (553, "5.1.7")


async def test_without_reject_they_only_score() -> None:
    verdict = await make(reject_unknown_domain=False).check(tx("user@localhost"))
    assert verdict.final is None
    assert [s.name for s in verdict.symbols] == ["SENDER_DOMAIN_INVALID"]
    assert verdict.symbols[0].score == 4.0


@pytest.mark.parametrize("sender", ["", "user@[192.0.2.1]"])
async def test_null_sender_and_address_literals_are_not_judged(sender: str) -> None:
    assert await make().check(tx(sender)) == make().found()


async def test_local_domain_from_outside_is_forged() -> None:
    verdict = await make().check(tx("ceo@Example.COM"))
    assert verdict.final is not None and verdict.final.symbol.name == "SENDER_LOCAL_FORGED"
    assert verdict.final.reply is not None
    assert str(verdict.final.reply) == "550 5.7.1 Sender address rejected: Local domain used " \
        "from outside"
    wildcard = await make().check(tx("x@a.corp.example"))
    assert wildcard.final is not None
    scored = await make(reject_local_forged=False).check(tx("ceo@example.com"))
    assert scored.final is None and scored.symbols[0].name == "SENDER_LOCAL_FORGED"


async def test_local_domain_from_our_networks_or_the_relay_listener_is_fine() -> None:
    assert (await make().check(tx("ceo@example.com", ip="10.9.8.7"))).final is None
    relay = await make().check(tx("ceo@example.com", listener=Listener.RELAY))
    assert relay.final is None and relay.symbols == ()


async def test_other_domains_need_a_resolver() -> None:
    with pytest.raises(RuntimeError, match="resolver"):
        await make().check(tx("alice@partner.example"))


def test_off_by_default() -> None:
    assert Config().filters.sender.mode is Mode.OFF


@pytest.mark.parametrize(("records", "null"), [
    (("0 .",), True),
    (("10 .",), True),
    (("0 .", "10 mx.partner.example"), False),
    (("10 mx.partner.example",), False),
    ((), False),
])
def test_null_mx(records: tuple[str, ...], null: bool) -> None:
    answer = DNSAnswer("partner.example", "MX", DNSStatus.OK, records)
    assert is_null_mx(answer) is null
