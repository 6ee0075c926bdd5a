"""Shared rate windows, and the connect-time checks: rate limits, penalty box, early
talker, with their settings."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.client_state import ClientState
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.early_talker import EarlyTalkerFilter
from appliance.filters.penalty_box import PenaltyBoxFilter
from appliance.filters.rate_limits import ConnectionRateFilter, MessageRateFilter
from appliance.filters.registry import settings_for
from appliance.penalty import Points
from appliance.services import ListRegistry, Services
from appliance.smtp import rates
from appliance.smtp.rates import CONNECTIONS, FILE_SIZE, MAGIC, MESSAGES, RateWindows
from appliance.verdict import Decision, Stage

MINUTE = 1_000_000 * 60.0  # the start of a window


# -- rate windows ---------------------------------------------------------------------------


def test_a_fixed_limit_within_one_window():
    windows = RateWindows()
    allowed = [windows.hit(CONNECTIONS, "192.0.2.1", 3, MINUTE + 1, count_refused=True).allowed
               for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 1) == 5  # refused ones count
    assert windows.peek(CONNECTIONS, "192.0.2.2", MINUTE + 1) == 0
    assert windows.peek(MESSAGES, "192.0.2.1", MINUTE + 1) == 0  # meters are separate


def test_the_window_slides_the_previous_count_out():
    windows = RateWindows()
    for _ in range(10):
        windows.hit(CONNECTIONS, "192.0.2.1", 0, MINUTE + 59, count_refused=True)
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 60) == 10
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 75) == pytest.approx(7.5)
    # A limit of 9: at +75 s the estimate is 7.5, so one more fits (8.5), then no more.
    assert windows.hit(CONNECTIONS, "192.0.2.1", 9, MINUTE + 75, count_refused=False).allowed
    assert not windows.hit(CONNECTIONS, "192.0.2.1", 9, MINUTE + 75, count_refused=False).allowed
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 90) == pytest.approx(6)
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 150) == pytest.approx(0.5)
    assert windows.peek(CONNECTIONS, "192.0.2.1", MINUTE + 180) == 0


def test_refused_messages_do_not_count():
    windows = RateWindows()
    for _ in range(4):
        windows.hit(MESSAGES, "192.0.2.1", 2, 3600.0 * 1000, count_refused=False)
    assert windows.peek(MESSAGES, "192.0.2.1", 3600.0 * 1000) == 2


def test_workers_share_the_counts_through_the_file(tmp_path: Path):
    path = tmp_path / "run" / "rates"
    one, two = RateWindows(path), RateWindows(path)
    results = [(one if n % 2 else two).hit(CONNECTIONS, "2001:db8::/64", 4, MINUTE,
                                            count_refused=True).allowed for n in range(6)]
    assert results == [True, True, True, True, False, False]
    one.close()
    again = RateWindows(path)  # a restarted worker keeps the counts
    assert again.peek(CONNECTIONS, "2001:db8::/64", MINUTE) == 6
    again.close()
    two.close()


def test_a_file_of_another_layout_is_reset(tmp_path: Path):
    path = tmp_path / "rates"
    path.write_bytes(b"garbage" * 10)
    windows = RateWindows(path)
    assert os.path.getsize(path) == FILE_SIZE and path.read_bytes()[:8] == MAGIC
    assert windows.hit(CONNECTIONS, "192.0.2.1", 1, MINUTE, count_refused=True).allowed
    windows.close()


def test_clients_in_one_bucket_keep_their_own_counts(monkeypatch):
    # Force every client into bucket 7: the ways and the tags keep them apart.
    monkeypatch.setattr(rates, "_hash", lambda key: (7, hash(key) & 0x7FFFFFFF or 1))
    windows = RateWindows()
    clients = [f"192.0.2.{n}" for n in range(rates.WAYS)]
    for n, client in enumerate(clients):
        for _ in range(n + 1):
            windows.hit(CONNECTIONS, client, 0, MINUTE, count_refused=True)
    assert [windows.peek(CONNECTIONS, c, MINUTE) for c in clients] == list(range(1, 9))
    # One more client than ways: the quietest one is evicted, nobody inherits a count.
    windows.hit(CONNECTIONS, "198.51.100.1", 0, MINUTE, count_refused=True)
    assert windows.peek(CONNECTIONS, "198.51.100.1", MINUTE) == 1
    assert windows.peek(CONNECTIONS, clients[0], MINUTE) == 0
    assert windows.peek(CONNECTIONS, clients[-1], MINUTE) == 8


# -- the filters ------------------------------------------------------------------------------


def build(cls, overrides: dict, *, dry_run: bool = False, state: ClientState | None = None):
    config = Config.model_validate({"relay_networks": ["10.0.0.0/8"], **overrides})
    lists = ListRegistry(config, {})
    if state is None:
        state = ClientState(config, None)
    state.configure(config, lists)
    services = Services(lists=lists, clients=state, dry_run=dry_run)
    return cls(settings_for(cls, config), config.scoring.weights, config, services), state


def connect_tx(ip: str = "203.0.113.9", listener: Listener = Listener.INBOUND):
    conn = ConnectionContext(ipaddress.ip_address(ip), 40000, listener)
    return TransactionContext(connection=conn)


async def test_connection_rate_refuses_with_421_and_exempts_trusted_clients():
    flt, _ = build(ConnectionRateFilter, {"filters": {
        "rate_limits": {"connections_per_minute": 2, "exempt_networks": ["198.51.100.0/24"]},
        "ip_lists": {"allow": ["192.0.2.0/24"]},
    }})
    assert flt.stage is Stage.CONNECT
    verdicts = [await flt.check(connect_tx()) for _ in range(3)]
    assert [v.final is None for v in verdicts] == [True, True, False]
    final = verdicts[2].final
    assert final.decision is Decision.TEMPFAIL and str(final.reply).startswith("421 4.7.0")
    assert final.symbol.name == "CONNECTION_RATE" and "(limit 2)" in final.symbol.reason
    for trusted in ("10.9.9.9", "198.51.100.5", "192.0.2.77"):
        assert all([(await flt.check(connect_tx(trusted))).final is None for _ in range(4)])


async def test_ipv6_clients_are_limited_per_64():
    flt, _ = build(MessageRateFilter, {"filters": {"rate_limits": {"messages_per_hour": 2}}})
    assert flt.stage is Stage.MAIL
    results = [await flt.check(connect_tx(f"2001:db8:5:6::{n}")) for n in range(1, 4)]
    assert [r.final is None for r in results] == [True, True, False]
    assert str(results[2].final.reply).startswith("451 4.7.1")
    assert (await flt.check(connect_tx("2001:db8:5:7::1"))).final is None


async def test_a_dry_run_reads_the_rates_but_counts_nothing():
    live, state = build(ConnectionRateFilter,
                        {"filters": {"rate_limits": {"connections_per_minute": 1}}})
    dry, _ = build(ConnectionRateFilter,
                   {"filters": {"rate_limits": {"connections_per_minute": 1}}},
                   dry_run=True, state=state)
    assert (await dry.check(connect_tx())).final is None
    assert (await live.check(connect_tx())).final is None
    assert (await dry.check(connect_tx())).final is not None  # would be refused now
    assert state.rates.peek(CONNECTIONS, "203.0.113.9", time.time()) == 1


async def test_penalty_box_thresholds_and_the_scaled_symbol():
    flt, state = build(PenaltyBoxFilter, {"filters": {"penalty_box": {
        "tempfail_score": 10, "reject_score": 30, "half_life": 3600,
    }}})
    assert (await flt.check(connect_tx())).symbols == ()
    state.penalty.add("203.0.113.9", [Points(5, "x")])
    verdict = await flt.check(connect_tx())
    [scaled] = verdict.symbols
    assert scaled.name == "PENALTY_SCORE" and scaled.score == pytest.approx(1.5, abs=0.01)
    assert verdict.final is None
    state.penalty.add("203.0.113.9", [Points(6, "y")])
    verdict = await flt.check(connect_tx())
    assert verdict.final.decision is Decision.TEMPFAIL
    assert str(verdict.final.reply).startswith("421 4.7.0")
    assert [s.name for s in verdict.symbols] == ["PENALTY_SCORE"]
    assert verdict.symbols[0].score == pytest.approx(3.0)  # scaled at most to its weight
    state.penalty.add("203.0.113.9", [Points(20, "z")])
    verdict = await flt.check(connect_tx())
    assert verdict.final.decision is Decision.REJECT
    assert str(verdict.final.reply).startswith("554 5.7.1")
    # The relay listener and relay_networks are exempt whatever their score.
    state.penalty.add("10.1.1.1", [Points(100, "z")])
    assert (await flt.check(connect_tx("10.1.1.1"))).final is None
    assert (await flt.check(connect_tx("203.0.113.9", Listener.RELAY))).final is None


async def test_early_talker_rejects_what_was_said_before_the_greeting():
    flt, _ = build(EarlyTalkerFilter, {"filters": {"early_talker": {"greeting_delay": 3}}})
    assert flt.stage is Stage.GREETING and "greeting_delay=3s" in flt.describe()
    tx = connect_tx()
    assert (await flt.check(tx)).final is None  # no delay applied / nothing said
    tx.connection.pregreet = b""
    assert (await flt.check(tx)).final is None
    tx.connection.pregreet = b"EHLO bot\r\n\x00"
    verdict = await flt.check(tx)
    assert str(verdict.final.reply) == "554 5.5.0 Protocol error: you talked before my greeting"
    assert verdict.final.symbol.reason == "11 octet(s) before the greeting: EHLO bot..."


def test_the_greeting_delay_is_off_by_default_and_follows_the_mode():
    state = ClientState(Config(), None)
    assert state.greeting_delay == 0
    config = Config.model_validate({"filters": {"early_talker": {"greeting_delay": 4}}})
    state.configure(config)
    assert state.greeting_delay == 4
    config = Config.model_validate({"filters": {"early_talker": {"greeting_delay": 4,
                                                                 "mode": "off"}}})
    state.configure(config)
    assert state.greeting_delay == 0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"early_talker": {"greeting_delay": -1}}, "greater than or equal to 0"),
    ({"early_talker": {"greeting_delay": 600}}, "less than or equal to 60"),
    ({"rate_limits": {"connections_per_minute": -3}}, "greater than or equal to 0"),
    ({"rate_limits": {"exempt_networks": ["10.0.0.999/8"]}}, "does not appear to be"),
    ({"penalty_box": {"half_life": -60}}, "greater than 0"),
    ({"penalty_box": {"tempfail_score": 10, "forget_below": 10}}, "forget_below"),
])
def test_bad_settings_name_their_key(overrides, message):
    with pytest.raises(ValidationError, match=message) as info:
        Config.model_validate({"filters": overrides})
    section = next(iter(overrides))
    assert f"filters.{section}" in str(info.value)
