"""Penalty box: decay math, the events that cost points, the store and a worker's view."""

from __future__ import annotations

import ipaddress
import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config.schema import PenaltyBoxSettings as Settings
from appliance.config.schema import PenaltyPoints
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.netblock import client_key, netblock, parse_client
from appliance.penalty import PenaltyBox, Points, connection_points, transaction_points
from appliance.storage.facade import Storage
from appliance.storage.penalty import PenaltyEvent, age_for, decayed
from appliance.verdict import Action, Reply, Symbol, SymbolSpec

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DECLARED = {
    "DNSBL_ZEN": SymbolSpec("DNSBL_ZEN", 3.0, "listed", "dnsbl"),
    "DNSWL_HI": SymbolSpec("DNSWL_HI", -3.0, "allowed", "dnsbl"),
    "BOMB_RE": SymbolSpec("BOMB_RE", 1.0, "regex"),
}


# -- decay math ---------------------------------------------------------------------------


@pytest.mark.parametrize(("age", "expected"), [(0, 16.0), (60, 8.0), (120, 4.0), (30, 16 / 2**0.5)])
def test_a_score_halves_every_half_life(age, expected):
    assert decayed(16.0, age, 60.0) == pytest.approx(expected)


def test_decay_never_grows_a_score_and_needs_a_positive_half_life():
    assert decayed(10.0, -30, 60.0) == 10.0  # a clock stepping back
    with pytest.raises(ValueError, match="half_life"):
        decayed(10.0, 5, 0)


def test_time_until_a_score_decays_to_a_threshold():
    assert age_for(40.0, 10.0, 60.0) == pytest.approx(120.0)
    assert age_for(5.0, 10.0, 60.0) == 0.0


# -- client keys --------------------------------------------------------------------------


def test_client_keys_are_addresses_or_ipv6_64s():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:bbbb::9") == client_key("2001:db8:1:2:aaaa::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")


def test_netblocks_group_clients_by_prefix():
    assert netblock("192.0.2.200", 24, 64) == "192.0.2.0/24"
    assert netblock("192.0.2.200", 32, 64) == "192.0.2.200"
    assert netblock(ipaddress.ip_address("2001:db8:abcd:12:1::5"), 24, 48) == "2001:db8:abcd::/48"


@pytest.mark.parametrize("text", ["300.1.2.3", "example.com", "192.0.2.0/24", "2001:db8::/48", ""])
def test_bad_client_addresses_are_refused_with_a_clear_error(text):
    with pytest.raises(ValueError, match="is not a client address"):
        parse_client(text)


def test_an_operator_may_name_an_ipv6_client_by_address_or_64():
    assert parse_client(" 2001:db8::5 ") == parse_client("2001:db8::/64") == "2001:db8::/64"


# -- events -------------------------------------------------------------------------------


def conn(ip: str = "203.0.113.9") -> ConnectionContext:
    return ConnectionContext(ipaddress.ip_address(ip), 40000, Listener.INBOUND)


def test_refused_recipients_listings_viruses_and_blocks_cost_points():
    connection = conn()
    connection.symbols = [Symbol("DNSBL_ZEN", 3.0, "connect-time listing")]
    tx = TransactionContext(connection=connection, symbols=list(connection.symbols))
    tx.rejected_recipients = [
        ("a@example.com", "550 5.1.1 unknown"),
        ("b@example.com", "550 5.7.1 Relaying denied"),
        ("c@example.com", "451 4.7.1 Greylisted"),  # a deferral is no misdeed
    ]
    tx.symbols += [Symbol("CLAMAV_VIRUS", 0, "Eicar"), Symbol("DNSWL_HI", -3.0),
                   Symbol("BOMB_RE", 1.0)]
    reject = Reply(554, "5.7.1", "virus")
    events = transaction_points(tx, Action.REJECT, reject, judged=True,
                                points=PenaltyPoints(), declared=DECLARED)
    assert [(e.points, e.reason.split()[0]) for e in events] == [
        (2.0, "2"), (25.0, "virus"), (4.0, "message")
    ]
    # The connect-time listing counts once per connection, when it ends.
    conn_events = connection_points(connection, protocol_errors=3, closed_for_errors=True,
                                    smuggling=1, points=PenaltyPoints(), declared=DECLARED)
    assert [e.points for e in conn_events] == [3.0, 10.0, 25.0, 5.0]


def test_unjudged_and_temporary_refusals_are_not_blocked_messages():
    tx = TransactionContext(connection=conn())
    too_big = Reply(552, "5.3.4", "too big")
    assert transaction_points(tx, Action.REJECT, too_big, judged=False,
                              points=PenaltyPoints(), declared=DECLARED) == []
    tempfail = Reply(451, "4.7.1", "later")
    assert transaction_points(tx, Action.REJECT, tempfail, judged=True,
                              points=PenaltyPoints(), declared=DECLARED) == []
    assert transaction_points(tx, Action.DISCARD, None, judged=True,
                              points=PenaltyPoints(), declared=DECLARED)[0].points == 4.0


def test_zero_points_switch_an_event_off():
    tx = TransactionContext(connection=conn())
    tx.rejected_recipients = [("a@example.com", "550 no")]
    points = PenaltyPoints(rejected_recipient=0)
    assert transaction_points(tx, None, None, judged=False, points=points,
                              declared=DECLARED) == []


# -- the store ----------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path):
    with Storage.open(tmp_path) as opened:
        yield opened


def test_points_add_to_the_decayed_score_and_clear_bumps_the_counter(storage):
    store = storage.penalty
    store.add_many([PenaltyEvent("192.0.2.1", 8, "a", T0)], half_life=60, now=T0)
    store.add_many([PenaltyEvent("192.0.2.1", 1, "b", T0 + timedelta(seconds=60))],
                   half_life=60, now=T0 + timedelta(seconds=60))
    entry = store.get("192.0.2.1")
    assert entry is not None and entry.score == pytest.approx(5.0)
    assert entry.events == 2 and entry.last_reason == "b" and entry.first_seen == T0
    assert entry.current(60, T0 + timedelta(seconds=120)) == pytest.approx(2.5)
    counter = store.change_counter()
    assert store.clear("192.0.2.1") is True
    assert store.clear("192.0.2.1") is False
    assert store.get("192.0.2.1") is None and store.change_counter() == counter + 1


def test_a_queued_event_is_decayed_to_the_time_it_is_written(storage):
    late = T0 + timedelta(seconds=120)
    storage.penalty.add_many([PenaltyEvent("192.0.2.2", 8, "a", T0)], half_life=60, now=late)
    entry = storage.penalty.get("192.0.2.2")
    assert entry is not None and entry.updated_at == late and entry.score == pytest.approx(2.0)


def test_bad_events_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        PenaltyEvent("192.0.2.1", -1, "x", T0)
    with pytest.raises(ValueError, match="non-negative"):
        PenaltyEvent("192.0.2.1", math.nan, "x", T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        PenaltyEvent("192.0.2.1", 1, "x", datetime(2026, 1, 1))


def test_two_writers_never_lose_each_others_points(tmp_path):
    first, second = Storage.open(tmp_path), Storage.open(tmp_path)

    def add(storage: Storage) -> None:
        for _ in range(50):
            storage.penalty.add_many([PenaltyEvent("192.0.2.3", 1, "x", T0)],
                                     half_life=1e9, now=T0)

    threads = [threading.Thread(target=add, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entry = first.penalty.get("192.0.2.3")
    assert entry is not None and entry.score == pytest.approx(100) and entry.events == 100
    first.close()
    second.close()


def test_purge_forgets_clients_whose_score_decayed(storage):
    store = storage.penalty
    store.add_many([PenaltyEvent("192.0.2.4", 1, "x", T0), PenaltyEvent("192.0.2.5", 100, "y", T0)],
                   half_life=60, now=T0)
    # After 5 half-lives: 1/32 and 100/32.
    assert store.purge(half_life=60, below=0.5, now=T0 + timedelta(seconds=300)) == 1
    assert [e.client for e in store.entries()] == ["192.0.2.5"]
    assert store.clear_all() == 1 and store.count() == 0


# -- a worker's view ------------------------------------------------------------------------


def test_a_worker_counts_its_own_points_at_once_and_decays_them():
    box = PenaltyBox(None, Settings(half_life=10))
    assert box.add("192.0.2.6", [Points(6, "a"), Points(2, "b")], now=1000.0) == 8.0
    assert box.score("192.0.2.6", now=1010.0) == pytest.approx(4.0)
    assert box.score("192.0.2.7", now=1010.0) == 0.0
    assert box.forget_decayed(1.0, now=1040.0) == 1 and len(box) == 0


async def test_workers_see_each_others_points_and_clears_after_a_refresh(tmp_path):
    settings = Settings(half_life=3600)
    with Storage.open(tmp_path) as storage:
        one = PenaltyBox(storage.penalty, settings)
        two = PenaltyBox(storage.penalty, settings)
        two.load()
        one.add("192.0.2.8", [Points(7, "harvest")])
        one.close()  # flushes the writer
        assert two.score("192.0.2.8") == 0.0
        await two.refresh()
        assert two.score("192.0.2.8") == pytest.approx(7, rel=1e-3)
        storage.penalty.clear("192.0.2.8")
        await two.refresh()
        assert two.score("192.0.2.8") == 0.0
        two.close()


def test_settings_refuse_bad_thresholds():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="reject_score must not be below tempfail_score"):
        Settings(tempfail_score=30, reject_score=20)
    with pytest.raises(ValidationError, match="half_life"):
        Settings(half_life=0)
    with pytest.raises(ValidationError, match="rejected_recipient"):
        Settings.model_validate({"points": {"rejected_recipient": -1}})
