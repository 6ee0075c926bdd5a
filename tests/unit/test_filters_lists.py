"""ip_lists, address_lists and recipient_lists with a real Config and Services."""

from __future__ import annotations

import ipaddress
from typing import TypeVar

from appliance.config.schema import Config
from appliance.context import (
    ConnectionContext,
    Listener,
    RecipientContext,
    TransactionContext,
)
from appliance.filters.address_lists import AddressListFilter, RecipientListFilter
from appliance.filters.base import Filter
from appliance.filters.ip_lists import IPListFilter
from appliance.filters.registry import is_red, settings_for
from appliance.services import Services
from appliance.verdict import Decision, Reply, Stage

F = TypeVar("F", bound=Filter)


def tx(
    ip: str = "203.0.113.5",
    sender: str = "someone@example.net",
    rcpt: str | None = None,
    listener: Listener = Listener.INBOUND,
) -> TransactionContext:
    connection = ConnectionContext(ipaddress.ip_address(ip), 40000, listener)
    ctx = TransactionContext(connection=connection, mail_from=sender)
    if rcpt is not None:
        ctx.current_rcpt = RecipientContext(rcpt)
    return ctx


def config_with(**lists: list[str]) -> Config:
    config = Config()
    for name, values in lists.items():
        if name in ("allow", "deny"):
            setattr(config.filters.ip_lists, name, values)
        else:
            setattr(config.filters.address_lists, name, values)
    return config


def make(cls: type[F], config: Config, db: dict[str, list[str]] | None = None) -> F:
    services = Services.from_config(config, db)
    return cls(settings_for(cls, config), config.scoring.weights, config, services)


# --- ip_lists --------------------------------------------------------------------------


async def test_ip_denied_is_rejected_with_554() -> None:
    flt = make(IPListFilter, config_with(deny=["203.0.113.0/24"]))
    assert flt.stage is Stage.CONNECT
    verdict = await flt.check(tx("203.0.113.5"))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.reply == Reply(554, "5.7.1", "Access denied")
    assert verdict.final.symbol.name == "IP_DENIED"
    assert "203.0.113.0/24" in verdict.final.symbol.reason


async def test_ip_allowed_is_accepted_with_negative_weight() -> None:
    flt = make(IPListFilter, config_with(allow=["198.51.100.0/24"]))
    verdict = await flt.check(tx("198.51.100.20"))
    assert verdict.final is not None and verdict.final.decision is Decision.ACCEPT
    assert verdict.final.symbol.name == "IP_ALLOWED" and verdict.final.symbol.score < 0


async def test_ip_lists_from_database_and_mapped_ipv6() -> None:
    flt = make(IPListFilter, Config(), {"ip_deny": ["192.0.2.0/24"]})
    verdict = await flt.check(tx("::ffff:192.0.2.1"))
    assert verdict.final is not None and verdict.final.symbol.name == "IP_DENIED"


async def test_more_specific_allow_beats_deny() -> None:
    flt = make(IPListFilter, config_with(deny=["10.0.0.0/8"], allow=["10.1.2.3/32"]))
    allowed = await flt.check(tx("10.1.2.3"))
    denied = await flt.check(tx("10.1.2.4"))
    assert allowed.final is not None and allowed.final.decision is Decision.ACCEPT
    assert denied.final is not None and denied.final.decision is Decision.REJECT


async def test_ip_lists_neutral_and_relay() -> None:
    flt = make(IPListFilter, config_with(deny=["0.0.0.0/0"]))
    assert not IPListFilter.applies_to_relay
    assert (await flt.check(tx("10.0.0.1", listener=Listener.RELAY))).final is None
    clean = make(IPListFilter, Config())
    verdict = await clean.check(tx("8.8.8.8"))
    assert verdict.final is None and verdict.symbols == ()


async def test_configured_weight_overrides_default() -> None:
    config = config_with(allow=["127.0.0.0/8"])
    config.scoring.weights = {"IP_ALLOWED": -3.5}
    verdict = await make(IPListFilter, config).check(tx("127.0.0.1"))
    assert verdict.final is not None and verdict.final.symbol.score == -3.5


# --- address_lists (sender) ------------------------------------------------------------


async def test_whitelisted_sender_is_accepted() -> None:
    flt = make(AddressListFilter, config_with(whitelist=["@example.net"]))
    assert flt.stage is Stage.MAIL
    verdict = await flt.check(tx(sender="Someone@Example.NET"))
    assert verdict.final is not None and verdict.final.decision is Decision.ACCEPT
    assert verdict.final.symbol.name == "WHITELISTED"
    assert "@example.net" in verdict.final.symbol.reason


async def test_autowhitelisted_sender_from_database() -> None:
    flt = make(AddressListFilter, Config(), {"autowhitelist": ["pal@far.test"]})
    verdict = await flt.check(tx(sender="pal@far.test"))
    assert verdict.final is not None and verdict.final.symbol.name == "AUTOWHITELISTED"


async def test_autowhitelist_can_be_disabled() -> None:
    config = Config()
    config.filters.address_lists.use_autowhitelist = False
    flt = make(AddressListFilter, config, {"autowhitelist": ["pal@far.test"]})
    assert (await flt.check(tx(sender="pal@far.test"))).final is None


async def test_blacklisted_sender_is_rejected_with_550() -> None:
    flt = make(AddressListFilter, config_with(blacklist=["*.spam.test"]))
    verdict = await flt.check(tx(sender="x@mx.spam.test"))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.reply == Reply(550, "5.7.1", "Sender blacklisted")
    assert verdict.final.symbol.name == "BLACKLISTED"


async def test_specific_blacklist_beats_domain_whitelist_and_vice_versa() -> None:
    flt = make(AddressListFilter, config_with(
        whitelist=["@partner.test", "boss@bad.test"], blacklist=["spoof@partner.test", "bad.test"]
    ))
    spoof = await flt.check(tx(sender="spoof@partner.test"))
    friend = await flt.check(tx(sender="friend@partner.test"))
    boss = await flt.check(tx(sender="boss@bad.test"))
    other = await flt.check(tx(sender="other@bad.test"))
    assert spoof.final is not None and spoof.final.symbol.name == "BLACKLISTED"
    assert friend.final is not None and friend.final.symbol.name == "WHITELISTED"
    assert boss.final is not None and boss.final.symbol.name == "WHITELISTED"
    assert other.final is not None and other.final.symbol.name == "BLACKLISTED"


async def test_autowhitelist_never_beats_blacklist() -> None:
    flt = make(AddressListFilter, config_with(blacklist=["@spam.test"]),
               {"autowhitelist": ["x@spam.test"]})
    verdict = await flt.check(tx(sender="x@spam.test"))
    assert verdict.final is not None and verdict.final.symbol.name == "BLACKLISTED"


async def test_noprocessing_sender() -> None:
    flt = make(AddressListFilter, config_with(noprocessing=["/^newsletter@/"],
                                               blacklist=["@lists.test"]))
    verdict = await flt.check(tx(sender="newsletter@lists.test"))
    assert verdict.final is not None and verdict.final.symbol.name == "NOPROCESSING"
    assert verdict.final.decision is Decision.ACCEPT


async def test_redlisted_sender_is_marked_red() -> None:
    flt = make(AddressListFilter, config_with(redlist=["away@example.net"],
                                               whitelist=["away@example.net"]))
    plain = make(AddressListFilter, config_with(redlist=["away@example.net"]))
    verdict = await plain.check(tx(sender="away@example.net"))
    assert verdict.final is None
    assert [s.name for s in verdict.symbols] == ["REDLISTED"]
    assert verdict.symbols[0].score == 0 and is_red(verdict.symbols)
    both = await flt.check(tx(sender="away@example.net"))
    assert both.final is not None and both.final.symbol.name == "WHITELISTED"
    assert is_red(both.symbols)


async def test_null_sender_matches_nothing() -> None:
    flt = make(AddressListFilter, config_with(
        blacklist=["/.*/"], whitelist=["*"], redlist=["/^$/"], noprocessing=["/.?/"]
    ))
    verdict = await flt.check(tx(sender=""))
    assert verdict.final is None and verdict.symbols == ()


async def test_unlisted_sender_has_no_findings() -> None:
    flt = make(AddressListFilter, config_with(whitelist=["a@b.test"], blacklist=["c@d.test"]))
    verdict = await flt.check(tx(sender="e@f.test"))
    assert verdict.final is None and verdict.symbols == ()


# --- recipient_lists -------------------------------------------------------------------


async def test_spamlover_recipient_symbol_names_the_recipient() -> None:
    flt = make(RecipientListFilter, config_with(spamlovers=["lover@corp.test"]))
    assert flt.stage is Stage.RCPT and flt.settings is flt.config.filters.address_lists
    verdict = await flt.check(tx(rcpt="Lover@corp.test"))
    assert verdict.final is None
    (symbol,) = verdict.symbols
    assert symbol.name == "SPAMLOVER" and symbol.score == 0
    assert "Lover@corp.test" in symbol.reason


async def test_noprocessing_recipient_is_accepted() -> None:
    flt = make(RecipientListFilter, Config(), {"noprocessing": ["abuse@corp.test"]})
    verdict = await flt.check(tx(rcpt="abuse@corp.test"))
    assert verdict.final is not None and verdict.final.decision is Decision.ACCEPT
    assert verdict.final.symbol.name == "NOPROCESSING"


async def test_recipient_lists_ignore_sender_and_missing_rcpt() -> None:
    flt = make(RecipientListFilter, config_with(spamlovers=["x@corp.test"]))
    assert (await flt.check(tx(sender="x@corp.test"))).symbols == ()
    assert (await flt.check(tx(rcpt="y@corp.test"))).symbols == ()
