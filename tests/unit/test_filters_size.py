"""The size filter scores mail above filters.size.max_size."""

from __future__ import annotations

import ipaddress

from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.size import SizeFilter
from appliance.services import Services


def make(max_size: int | None) -> SizeFilter:
    config = Config()
    config.filters.size.max_size = max_size
    settings = config.filters.size
    return SizeFilter(settings, config.scoring.weights, config, Services.from_config(config))


def tx(size: int) -> TransactionContext:
    connection = ConnectionContext(ipaddress.ip_address("203.0.113.9"), 40000, Listener.INBOUND)
    head = b"Subject: x\r\n\r\n"
    content = head + b"x" * max(0, size - len(head))
    assert len(content) == max(size, len(head))
    return TransactionContext(connection=connection, content=content)


async def test_no_max_size_no_score() -> None:
    assert (await make(None).check(tx(10_000_000))).symbols == ()


async def test_at_or_below_limit_no_score() -> None:
    flt = make(1000)
    assert (await flt.check(tx(1000))).symbols == ()
    assert (await flt.check(tx(10))).symbols == ()


async def test_above_limit_scores() -> None:
    verdict = await make(1000).check(tx(1001))
    (symbol,) = verdict.symbols
    assert symbol.name == "MESSAGE_SIZE" and symbol.score == 1.0
    assert symbol.reason == "1001 octets > 1000"
    assert verdict.final is None
