"""Greylisting: the decision, sender normalisation, the store, a worker's cache and the
filter with its exemptions."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.client_state import ClientState
from appliance.config.schema import Config, GreylistSettings
from appliance.context import ConnectionContext, Listener, RecipientContext, TransactionContext
from appliance.filters.greylist import GreylistFilter
from appliance.filters.registry import settings_for
from appliance.greylist import (
    Greylist,
    Outcome,
    Policy,
    TripletState,
    judge,
    normalise_sender,
)
from appliance.services import ListRegistry, Services
from appliance.storage.facade import Storage
from appliance.storage.greylist import EventKind, GreylistEvent
from appliance.verdict import Decision, Mode

POLICY = Policy(delay=300, retry_window=3600, keep_for=86400)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# -- the decision -------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "now", "outcome", "remaining"), [
    (None, 1000, Outcome.NEW, 300),
    (TripletState(1000, 1000, False), 1100, Outcome.EARLY, 200),
    (TripletState(1000, 1100, False), 1300, Outcome.RETRIED, 0),
    (TripletState(1000, 1100, False), 1000 + 3601, Outcome.EXPIRED, 300),
    (TripletState(1000, 5000, True), 5000 + 86400, Outcome.KNOWN, 0),
    (TripletState(1000, 5000, True), 5000 + 86401, Outcome.EXPIRED, 300),
])
def test_judge(state, now, outcome, remaining):
    verdict = judge(state, now, POLICY)
    assert (verdict.outcome, verdict.remaining) == (outcome, remaining)
    assert verdict.passes == (outcome in (Outcome.RETRIED, Outcome.KNOWN))


def test_with_no_delay_the_first_attempt_is_still_delayed_but_any_retry_passes():
    policy = Policy(delay=0, retry_window=60, keep_for=60)
    assert judge(None, 10, policy).outcome is Outcome.NEW
    assert judge(TripletState(10, 10, False), 10.5, policy).outcome is Outcome.RETRIED


@pytest.mark.parametrize(("sender", "key"), [
    ("", "<>"),
    ("Alice@Partner.Example", "alice@partner.example"),
    ("alice+newsletter@partner.example", "alice@partner.example"),
    ("prvs=1234abcdef=alice@partner.example", "alice@partner.example"),
    ("bounce-12345-67@lists.example", "bounce-#-#@lists.example"),
    ("x" * 600 + "@example.com", ("x" * 600 + "@example.com")[:512]),
])
def test_senders_that_change_per_message_make_one_triplet(sender, key):
    assert normalise_sender(sender) == key


# -- the store ------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path):
    with Storage.open(tmp_path) as opened:
        yield opened


def event(kind, at, first=None, net="192.0.2.0/24", rcpt="bob@example.com"):
    return GreylistEvent(kind, net, "alice@partner.example", rcpt, at, first)


def test_the_earliest_first_attempt_wins_and_a_pass_counts_for_the_network(storage):
    store = storage.greylist
    later = T0 + timedelta(seconds=5)
    store.record_many([event(EventKind.ATTEMPT, later, later)])
    store.record_many([event(EventKind.ATTEMPT, T0, T0)])  # another worker saw it first
    entry = store.lookup("192.0.2.0/24", "alice@partner.example", "bob@example.com")
    assert entry is not None and entry.first_seen == T0 and entry.attempts == 2
    assert not entry.passed
    assert [e.recipient for e in store.delayed()] == ["bob@example.com"]

    passed_at = T0 + timedelta(seconds=400)
    store.record_many([event(EventKind.PASS, passed_at, T0), event(EventKind.PASS, passed_at, T0)])
    entry = store.lookup("192.0.2.0/24", "alice@partner.example", "bob@example.com")
    assert entry is not None and entry.passed_at == passed_at and entry.first_seen == T0
    [client] = store.clients()
    assert client.passes == 1  # one triplet passed once, however many workers said so
    assert store.delayed() == [] and len(store.passed()) == 1
    assert store.counts() == {"delayed": 0, "passed": 1, "clients": 1}


def test_restart_and_use_and_purge(storage):
    store = storage.greylist
    store.record_many([event(EventKind.ATTEMPT, T0, T0)])
    restarted = T0 + timedelta(days=3)
    store.record_many([event(EventKind.RESTART, restarted)])
    entry = store.lookup("192.0.2.0/24", "alice@partner.example", "bob@example.com")
    assert entry is not None and entry.first_seen == restarted and entry.attempts == 1
    store.record_many([event(EventKind.ATTEMPT, T0, T0, rcpt="old@example.com"),
                       event(EventKind.PASS, restarted, restarted, rcpt="used@example.com")])
    store.record_many([event(EventKind.SEEN, restarted + timedelta(days=30),
                             rcpt="used@example.com")])
    # Two days' retry window, 36 days' life since the last use.
    removed = store.purge(retry_window=2 * 86400, keep_for=36 * 86400,
                          now=restarted + timedelta(days=1))
    assert removed == 1  # old@example.com: never retried within the window
    removed = store.purge(retry_window=2 * 86400, keep_for=36 * 86400,
                          now=restarted + timedelta(days=60))
    assert removed == 1  # the restarted pending one; used@ was used 30 days later
    assert [e.recipient for e in store.passed()] == ["used@example.com"]


def test_clear_forgets_one_network_or_everything(storage):
    store = storage.greylist
    store.record_many([event(EventKind.ATTEMPT, T0, T0),
                       event(EventKind.ATTEMPT, T0, T0, net="198.51.100.0/24")])
    counter = store.change_counter()
    assert store.clear("198.51.100.0/24") == 1
    assert store.change_counter() == counter + 1
    assert store.clear() == 1 and store.counts()["delayed"] == 0


def test_bad_events_are_refused():
    with pytest.raises(ValueError, match="512"):
        GreylistEvent(EventKind.ATTEMPT, "192.0.2.0/24", "a" * 513, "b", T0)
    with pytest.raises(ValueError, match="client network"):
        GreylistEvent(EventKind.ATTEMPT, "", "a", "b", T0)
    with pytest.raises(ValueError):
        GreylistEvent("bogus", "192.0.2.0/24", "a", "b", T0)  # type: ignore[arg-type]


# -- a worker's cache, two workers sharing the database -------------------------------------


async def test_a_retry_passes_on_another_worker_and_networks_get_whitelisted(tmp_path):
    settings = GreylistSettings(mode=Mode.BLOCK, delay=60, auto_whitelist_after=2)
    with Storage.open(tmp_path) as storage:
        one = Greylist(storage.greylist, settings)
        two = Greylist(storage.greylist, settings)
        net = "192.0.2.0/24"
        first = await one.check(net, "a@x.example", "b@example.com", now=1000)
        assert first.outcome is Outcome.NEW
        one.flush()
        early = await two.check(net, "a@x.example", "b@example.com", now=1030)
        assert (early.outcome, early.remaining) == (Outcome.EARLY, 30)
        assert (await two.check(net, "a@x.example", "b@example.com", now=1061)).passes
        # The first worker knew the triplet from its cache: past the delay it passes too.
        assert (await one.check(net, "a@x.example", "b@example.com", now=1062)).passes

        assert two.client_whitelisted(net) is None
        await two.check(net, "a@x.example", "c@example.com", now=1000)
        await two.check(net, "a@x.example", "c@example.com", now=1100)
        assert two.client_whitelisted(net) == 2
        two.flush()
        await one.refresh()
        assert one.client_whitelisted(net) >= 2
        one.close()
        two.close()


async def test_the_cache_is_bounded():
    cache = Greylist(None, GreylistSettings(), max_entries=3)
    for n in range(5):
        await cache.check("192.0.2.0/24", "a@x.example", f"u{n}@example.com", now=1000)
    assert (await cache.check("192.0.2.0/24", "a@x.example", "u0@example.com",
                              now=2000)).outcome is Outcome.NEW


# -- the filter -----------------------------------------------------------------------------


def make_filter(config: Config, db: dict[str, list[str]] | None = None, *, dry_run=False):
    lists = ListRegistry(config, db)
    state = ClientState(config, None)
    state.configure(config, lists)
    services = Services(lists=lists, clients=state, dry_run=dry_run)
    return GreylistFilter(settings_for(GreylistFilter, config), {}, config, services)


def rcpt_tx(ip="203.0.113.9", sender="alice@partner.example", rcpt="bob@example.com"):
    conn = ConnectionContext(ipaddress.ip_address(ip), 40000, Listener.INBOUND)
    tx = TransactionContext(connection=conn, mail_from=sender)
    tx.current_rcpt = RecipientContext(rcpt)
    return tx


def greylist_config(**settings) -> Config:
    return Config.model_validate({"relay_networks": ["10.0.0.0/8"],
                                  "filters": {"greylist": {"mode": "block", **settings}}})


async def test_new_triplet_gets_451_with_the_wait_and_the_retry_passes_once_per_message():
    flt = make_filter(greylist_config(delay=0))
    verdict = await flt.check(rcpt_tx())
    assert verdict.final is not None and verdict.final.decision is Decision.TEMPFAIL
    reply = verdict.final.reply
    assert reply is not None and (reply.code, reply.enhanced) == (451, "4.7.1")
    assert "retry in 1 seconds" in reply.text
    assert verdict.final.symbol.name == "GREYLISTED"
    tx = rcpt_tx(rcpt="bob@example.com")
    passed = await flt.check(tx)
    assert [s.name for s in passed.symbols] == ["GREYLIST_PASSED"] and passed.final is None
    tx.symbols.extend(passed.symbols)
    tx.current_rcpt = RecipientContext("bob@example.com")
    assert (await flt.check(tx)).symbols == ()  # one GREYLIST_PASSED per message


@pytest.mark.parametrize(("ip", "sender", "settings", "db", "reason"), [
    ("10.1.2.3", "a@x.example", {}, None, "trusted client"),
    ("203.0.113.9", "a@x.example", {"pass_networks": ["203.0.113.0/24"]}, None,
     "pass_networks"),
    ("203.0.113.9", "a@mx.bigmail.example", {"pass_sender_domains": ["*.bigmail.example"]},
     None, "pass_sender_domains"),
    ("203.0.113.9", "", {"null_sender": "pass"}, None, "null sender"),
    ("203.0.113.9", "friend@partner.example", {}, {"whitelist": ["@partner.example"]},
     "whitelisted"),
    ("203.0.113.9", "carol@partner.example", {}, {"autowhitelist": ["carol@partner.example"]},
     "autowhitelisted"),
])
async def test_exemptions_pass_without_a_delay(ip, sender, settings, db, reason):
    flt = make_filter(greylist_config(**settings), db)
    verdict = await flt.check(rcpt_tx(ip=ip, sender=sender))
    assert verdict.final is None
    [symbol] = verdict.symbols
    assert symbol.name == "GREYLIST_PASSED" and reason in symbol.reason


async def test_the_null_sender_is_greylisted_by_default_and_ipv6_by_64():
    flt = make_filter(greylist_config())
    assert (await flt.check(rcpt_tx(sender=""))).final is not None
    verdict = await flt.check(rcpt_tx(ip="2001:db8:1:2::25", sender=""))
    assert "2001:db8:1:2::/64 <> -> bob@example.com" in verdict.final.symbol.reason
    # Another address of the same /64 is the same client network: now a retry.
    other = await flt.check(rcpt_tx(ip="2001:db8:1:2:ffff::1", sender=""))
    assert other.final.symbol.reason.endswith(": early")


async def test_a_dry_run_remembers_nothing():
    flt = make_filter(greylist_config(), dry_run=True)
    for _ in range(2):
        verdict = await flt.check(rcpt_tx())
        assert verdict.final is not None and verdict.final.symbol.reason.endswith(": new")


@pytest.mark.parametrize(("settings", "message"), [
    ({"delay": -5}, "greater than or equal to 0"),
    ({"delay": 600, "retry_window": 300}, "retry_window must be longer than delay"),
    ({"pass_networks": ["192.0.2.300/24"]}, "does not appear to be an IPv4 or IPv6 network"),
    ({"pass_networks": ["not-a-network"]}, "does not appear to be an IPv4 or IPv6 network"),
    ({"pass_sender_domains": ["bad domain"]}, "invalid domain name"),
    ({"ipv4_prefix": 33}, "less than or equal to 32"),
    ({"null_sender": "accept"}, "'greylist' or 'pass'"),
])
def test_bad_settings_are_refused_with_a_clear_error(settings, message):
    with pytest.raises(ValidationError, match=message):
        greylist_config(**settings)


def test_greylisting_is_off_by_default():
    assert Config().filters.greylist.mode is Mode.OFF
