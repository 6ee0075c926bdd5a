"""The message log and its background writer, against real SQLite files."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from appliance.storage import BackgroundWriter, MessageLogEntry, MessageLogWriter, Storage
from appliance.storage.schema import message_log
from appliance.verdict import Action, Symbol

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage.open(tmp_path)
    yield store
    store.close()


def entry(txid: str, **kw: object) -> MessageLogEntry:
    fields: dict[str, object] = {
        "id": txid,
        "time": NOW,
        "listener": "inbound",
        "client_ip": "192.0.2.1",
        "helo": "mx.example.net",
        "sender": "alice@example.net",
        "recipients": ["bob@example.com"],
        "subject": "hello",
        "size": 1234,
        "symbols": [],
        "total": 0.0,
        "action": "deliver",
        "reply": "250 2.0.0 Ok",
    }
    fields.update(kw)
    return MessageLogEntry(**fields)  # type: ignore[arg-type]


# -- the entry ---------------------------------------------------------------------------


def test_entry_accepts_symbols_and_enums_from_the_pipeline() -> None:
    e = entry(
        "t1",
        symbols=[Symbol("DNSBL_ZEN", 3.0, "127.0.0.2"), ("BAYES_SPAM", 4, "p=0.99")],
        action=Action.QUARANTINE,
        time=datetime(2030, 1, 1, 12, tzinfo=UTC) + timedelta(),
    )
    assert e.symbols == [("DNSBL_ZEN", 3.0, "127.0.0.2"), ("BAYES_SPAM", 4.0, "p=0.99")]
    assert e.action == "quarantine"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("action", "bounce", "unknown action"),
        ("listener", "submission", "unknown listener"),
        ("time", datetime(2030, 1, 1), "timezone-aware"),
        ("id", "", "transaction id"),
        ("id", "x" * 65, "transaction id"),
    ],
)
def test_entry_refuses_invalid_fields(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry("t1", **{field: value})


# -- record and read back ----------------------------------------------------------------


def test_record_and_get_round_trip(storage: Storage) -> None:
    original = entry(
        "0190abcdef012345",
        time=NOW.astimezone(),  # any timezone in, UTC out
        listener="relay",
        recipients=["x@example.com", "y@example.com", "z@example.com"],
        symbols=[("B", 2.5, "second"), ("A", -1.0, "first"), ("C", 0.0, "")],
        total=1.5,
        action="tag",
        downstream_reply="250 2.0.0 Ok: queued as ABC",
        duration_ms=12.75,
        quarantine_path="/var/lib/postwall/mail/spam/0190abcdef012345.eml",
    )
    storage.messagelog.record(original)
    loaded = storage.messagelog.get("0190abcdef012345")
    assert loaded == original
    assert loaded is not None and loaded.time.tzinfo is UTC
    assert storage.messagelog.get("missing") is None


def test_recording_an_id_again_replaces_it(storage: Storage) -> None:
    log = storage.messagelog
    log.record_many([entry("dup", recipients=["a@example.com", "b@example.com"])])
    log.record_many([entry("dup", recipients=["c@example.com"], symbols=[("X", 1.0, "")])])
    assert log.count() == 1
    again = log.get("dup")
    assert again is not None
    assert again.recipients == ["c@example.com"] and again.symbols == [("X", 1.0, "")]
    assert log.count(recipient="a@example.com") == 0
    # duplicates inside one batch: the last one wins
    assert log.record_many([entry("d2", subject="one"), entry("d2", subject="two")]) == 1
    d2 = log.get("d2")
    assert d2 is not None and d2.subject == "two"


def test_nul_characters_are_stored_portably(storage: Storage) -> None:
    storage.messagelog.record(entry("nul", subject="bad\x00subject", helo="h\x00"))
    stored = storage.messagelog.get("nul")
    assert stored is not None and stored.subject == "bad\ufffdsubject"


# -- search --------------------------------------------------------------------------------


@pytest.fixture
def populated(storage: Storage) -> Storage:
    entries = [
        entry(
            f"m{i:03d}",
            time=NOW - timedelta(minutes=i),
            sender=f"sender{i % 3}@Example.NET",
            recipients=[f"user{i % 4}@example.com", "shared@example.com"],
            subject=f"Offer {i} 100% free" if i % 5 == 0 else f"Report {i}",
            client_ip=f"192.0.2.{i % 2}",
            action=("reject", "deliver", "tag")[i % 3],
        )
        for i in range(60)
    ]
    storage.messagelog.record_many(entries)
    return storage


def test_search_is_newest_first_with_paging(populated: Storage) -> None:
    log = populated.messagelog
    assert [e.id for e in log.search(limit=3)] == ["m000", "m001", "m002"]
    assert [e.id for e in log.search(limit=3, offset=58)] == ["m058", "m059"]
    assert log.count() == 60


def test_search_filters(populated: Storage) -> None:
    log = populated.messagelog

    def ids(**filters: object) -> set[str]:
        found = log.search(limit=1000, **filters)  # type: ignore[arg-type]
        assert len(found) == log.count(**filters)  # type: ignore[arg-type]
        return {e.id for e in found}

    assert ids(sender="SENDER1@example") == {f"m{i:03d}" for i in range(60) if i % 3 == 1}
    assert ids(recipient="user2@") == {f"m{i:03d}" for i in range(60) if i % 4 == 2}
    assert len(ids(recipient="SHARED")) == 60
    assert ids(subject="100%") == {f"m{i:03d}" for i in range(60) if i % 5 == 0}
    assert ids(subject="_") == set()  # LIKE wildcards are literal
    assert ids(client_ip="192.0.2.1") == {f"m{i:03d}" for i in range(60) if i % 2}
    assert ids(client_ip="192.0.2.") == set()  # exact, not a prefix
    assert ids(action="tag") == {f"m{i:03d}" for i in range(60) if i % 3 == 2}
    assert ids(action=Action.REJECT) == ids(action="reject")
    window = ids(since=NOW - timedelta(minutes=10), until=NOW - timedelta(minutes=5))
    assert window == {f"m{i:03d}" for i in range(6, 11)}
    combined = ids(sender="sender0", recipient="user0", action="reject")
    assert combined == {f"m{i:03d}" for i in range(60) if i % 12 == 0}
    with pytest.raises(ValueError, match="unknown action"):
        log.search(action="bounce")
    with pytest.raises(ValueError, match="timezone-aware"):
        log.search(since=datetime(2030, 1, 1))


def test_counts_by_action_in_hour_and_day_buckets(storage: Storage) -> None:
    base = datetime(2030, 3, 14, 10, 0, tzinfo=UTC)
    storage.messagelog.record_many(
        [
            entry("a", time=base + timedelta(minutes=5), action="deliver"),
            entry("b", time=base + timedelta(minutes=59, seconds=59), action="deliver"),
            entry("c", time=base + timedelta(minutes=30), action="reject"),
            entry("d", time=base + timedelta(hours=1, minutes=1), action="tag"),
            entry("e", time=base + timedelta(days=1), action="reject"),
            entry("f", time=base - timedelta(days=5), action="reject"),  # before `since`
        ]
    )
    hourly = storage.messagelog.counts_by_action(base - timedelta(hours=1))
    assert hourly == {
        base: {"deliver": 2, "reject": 1},
        base + timedelta(hours=1): {"tag": 1},
        base + timedelta(days=1): {"reject": 1},
    }
    assert list(hourly) == sorted(hourly)
    day = datetime(2030, 3, 14, tzinfo=UTC)
    daily = storage.messagelog.counts_by_action(
        day - timedelta(days=1), "day", until=day + timedelta(days=1)
    )
    assert daily == {day: {"deliver": 2, "reject": 1, "tag": 1}}
    with pytest.raises(ValueError, match="unknown bucket"):
        storage.messagelog.counts_by_action(day, "week")


def test_hour_and_day_buckets_of_the_same_query_differ(storage: Storage) -> None:
    # Regression: the statement cache reused the first bucket unit's SQL for the other.
    day = datetime(2030, 3, 14, tzinfo=UTC)
    storage.messagelog.record_many([entry("a", time=day + timedelta(hours=10))])
    since = day - timedelta(days=1)
    assert storage.messagelog.counts_by_action(since, "hour") == {
        day + timedelta(hours=10): {"deliver": 1}
    }
    assert storage.messagelog.counts_by_action(since, "day") == {day: {"deliver": 1}}


def test_purge_older_than(storage: Storage) -> None:
    log = storage.messagelog
    log.record_many(
        [entry(f"old{i}", time=NOW - timedelta(days=40, minutes=i)) for i in range(2500)]
        + [entry("new", time=NOW - timedelta(days=1))]
    )
    assert log.purge_older_than(30) == 2500
    assert [e.id for e in log.search()] == ["new"]
    assert log.count(recipient="bob@") == 1  # child rows went with their parents
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM message_recipients").scalar() == 1
    assert log.purge_older_than(30) == 0


# -- the background writer ---------------------------------------------------------------


def test_writer_batches_and_flush_waits_for_everything(storage: Storage) -> None:
    batches: list[int] = []

    def write(batch: Sequence[MessageLogEntry]) -> None:
        batches.append(len(batch))
        storage.messagelog.record_many(batch)

    writer = BackgroundWriter(write, batch_size=500, flush_interval=0.2)
    for i in range(1200):
        assert writer.submit(entry(f"b{i}"))
    assert writer.flush(timeout=10)
    assert writer.pending == 0
    assert storage.messagelog.count() == 1200
    assert sum(batches) == 1200 and max(batches) <= 500 and len(batches) < 20
    writer.close()


def test_writer_flushes_a_lone_entry_within_the_interval(storage: Storage) -> None:
    writer = MessageLogWriter(storage.messagelog, flush_interval=0.05)
    writer.submit(entry("lone"))
    deadline = time.monotonic() + 5
    while storage.messagelog.get("lone") is None:
        assert time.monotonic() < deadline, "entry never written"
        time.sleep(0.01)
    assert writer.close()


def test_flush_does_not_wait_for_the_batch_interval(storage: Storage) -> None:
    writer = MessageLogWriter(storage.messagelog, flush_interval=30)
    writer.submit(entry("quick"))
    started = time.monotonic()
    assert writer.flush(timeout=10)
    assert time.monotonic() - started < 5
    assert storage.messagelog.get("quick") is not None
    writer.close()


def test_writer_keeps_the_batch_while_the_database_is_locked(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path, busy_timeout_ms=50)
    blocker = Storage.open(tmp_path)
    writer = MessageLogWriter(storage.messagelog, flush_interval=0.01, max_backoff=0.1)
    with blocker.db.write() as conn:  # another process holds the write lock
        conn.execute(update(message_log).values(subject="x"))
        for i in range(50):
            writer.submit(entry(f"locked{i}"))
        assert writer.flush(timeout=0.5) is False
        assert writer.pending == 50
    assert writer.flush(timeout=10)
    assert storage.messagelog.count() == 50
    assert writer.failed == 0 and writer.dropped == 0 and writer.written == 50
    writer.close()
    blocker.close()
    storage.close()


def test_writer_retries_transient_errors_with_backoff(storage: Storage) -> None:
    attempts: list[float] = []

    def flaky(batch: Sequence[MessageLogEntry]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        storage.messagelog.record_many(batch)

    writer = BackgroundWriter(flaky, flush_interval=0.01, max_backoff=1.0)
    for i in range(10):
        writer.submit(entry(f"r{i}"))
    assert writer.flush(timeout=10)
    assert storage.messagelog.count() == 10
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[2] > gaps[0] * 2  # exponential backoff: ~0.05 s, 0.1 s, 0.2 s
    writer.close()


def test_an_entry_the_database_refuses_is_isolated_and_counted(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    writer = MessageLogWriter(storage.messagelog, flush_interval=0.01)
    writer.submit(entry("good1"))
    writer.submit(entry("poison", size=2**70))  # too big for SQLite INTEGER
    writer.submit(entry("good2"))
    assert writer.flush(timeout=10)
    assert {e.id for e in storage.messagelog.search()} == {"good1", "good2"}
    assert writer.failed == 1
    assert "poison" in caplog.text
    writer.close()


def test_full_queue_drops_with_a_warning_and_counts(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    busy, release = threading.Event(), threading.Event()

    def slow(batch: Sequence[MessageLogEntry]) -> None:
        busy.set()
        release.wait(10)
        storage.messagelog.record_many(batch)

    writer = BackgroundWriter(slow, max_queue=5, batch_size=1, flush_interval=0)
    assert writer.submit(entry("first"))
    assert busy.wait(5)  # the thread holds "first"; the queue is empty again
    accepted = [writer.submit(entry(f"q{i}")) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert writer.dropped == 3
    assert "queue full" in caplog.text
    release.set()
    assert writer.flush(timeout=10)
    assert storage.messagelog.count() == 6
    writer.close()


def test_close_flushes_and_refuses_later_submits(storage: Storage) -> None:
    writer = MessageLogWriter(storage.messagelog, flush_interval=10)
    for i in range(30):
        writer.submit(entry(f"c{i}"))
    assert writer.close(timeout=10)
    assert storage.messagelog.count() == 30
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(entry("late"))


def test_submit_does_not_wait_for_the_database(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path, busy_timeout_ms=2000)
    blocker = Storage.open(tmp_path)
    writer = MessageLogWriter(storage.messagelog, flush_interval=0)
    with blocker.db.write() as conn:
        conn.execute(update(message_log).values(subject="x"))
        started = time.monotonic()
        for i in range(2000):
            writer.submit(entry(f"s{i}"))
        assert time.monotonic() - started < 1.0  # while every write waits for the lock
    assert writer.close(timeout=30)
    assert storage.messagelog.count() == 2000
    blocker.close()
    storage.close()
