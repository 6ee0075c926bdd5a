"""The bayes filter's symbols, and what it adds to the message's tokens."""

from __future__ import annotations

import ipaddress

from appliance.classifier.table import TokenTable
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.bayes import BayesFilter
from appliance.services import Services

MESSAGE = (b"From: a@sender.example\r\nTo: b@corp.test\r\nSubject: hello\r\n"
           b"Message-ID: <1@sender.example>\r\n\r\nsee you tomorrow\r\n")


def make(probabilities: dict[str, float], *, spam: int = 100, ham: int = 100) -> BayesFilter:
    config = Config()
    services = Services.from_config(config)
    table = TokenTable()
    table.probabilities, table.spam, table.ham = probabilities, spam, ham
    services.bayes = table
    return BayesFilter(config.filters.bayes, config.scoring.weights, config, services)


def tx(peer: str) -> TransactionContext:
    connection = ConnectionContext(ipaddress.ip_address(peer), 40000, Listener.INBOUND)
    return TransactionContext(connection=connection, mail_from="a@sender.example",
                              content=MESSAGE)


async def test_the_connecting_clients_networks_are_tokens() -> None:
    """Before our Received header is added, the client's /8, /16 and /24 are clues as they
    will be in the copy a user forwards to spam@."""
    spammy_network = {"ip:203.0.113": 0.99, "ip:203.0": 0.99, "ip:203": 0.99}
    ordinary = {f"tok{i}": 0.2 for i in range(3)}
    flt = make(spammy_network | ordinary | {"s:hello": 0.99, "see": 0.99})
    verdict = await flt.check(tx("203.0.113.9"))
    [symbol] = verdict.symbols
    assert symbol.name in ("BAYES_99", "BAYES_999") and "clues=5/" in symbol.reason
    other = await flt.check(tx("198.51.100.7"))  # another network: only the 2 words
    assert [s.name for s in other.symbols] == ["BAYES_UNSURE"]
    mapped = await flt.check(tx("::ffff:203.0.113.9"))  # IPv4-mapped: its IPv4 networks
    assert "clues=5/" in mapped.symbols[0].reason


async def test_an_ipv6_clients_networks_are_tokens() -> None:
    network = {"ip6:2001:db8": 0.99, "ip6:2001:db8:5": 0.99, "ip6:2001:db8:5:0": 0.99}
    flt = make(network | {"s:hello": 0.99, "see": 0.99})
    verdict = await flt.check(tx("2001:db8:5::25"))
    assert "clues=5/" in verdict.symbols[0].reason
    elsewhere = await flt.check(tx("2001:db8:6::25"))  # same /32 only
    [symbol] = elsewhere.symbols
    assert symbol.name == "BAYES_UNSURE" and "only 3 known tokens" in symbol.reason


async def test_too_little_training_is_unsure() -> None:
    verdict = await make({"see": 0.99}, spam=3).check(tx("203.0.113.9"))
    [symbol] = verdict.symbols
    assert symbol.name == "BAYES_UNSURE" and "too little training" in symbol.reason
