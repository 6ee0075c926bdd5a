"""Storage engine, migrations and the lists, against real SQLite files."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.dialects import postgresql

from appliance.storage import (
    LIST_NAMES,
    MessageLogEntry,
    MessageLogWriter,
    Storage,
    create_storage_engine,
    head_version,
    normalise_value,
    upgrade,
)
from appliance.storage.engine import MIGRATIONS_DIR, sqlite_url
from appliance.storage.facade import DB_FILENAME
from appliance.storage.schema import message_log, metadata


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage.open(tmp_path / "data")
    yield store
    store.close()


def later(**kw: float) -> datetime:
    return datetime.now(UTC) + timedelta(**kw)


def entry(txid: str, **kw: object) -> MessageLogEntry:
    fields: dict[str, object] = {
        "id": txid,
        "time": datetime.now(UTC),
        "listener": "inbound",
        "client_ip": "192.0.2.1",
        "helo": "mx.example.net",
        "sender": "a@example.net",
        "recipients": ["b@example.com"],
        "subject": "hello",
        "size": 100,
        "symbols": [],
        "total": 0.0,
        "action": "deliver",
        "reply": "250 2.0.0 Ok",
    }
    fields.update(kw)
    return MessageLogEntry(**fields)  # type: ignore[arg-type]


# -- engine and migrations -------------------------------------------------------------


def test_open_creates_directory_and_database_in_wal_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "lib" / "postwall"
    with Storage.open(data_dir) as storage:
        assert (data_dir / DB_FILENAME).is_file()
        assert (data_dir / "mail" / "spam").is_dir()
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000


def test_schema_is_at_head_and_open_twice_is_idempotent(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as first:
        assert first.schema_version() == head_version()
        first.lists.add("whitelist", "keep@example.com")
    with Storage.open(tmp_path) as second:
        assert second.schema_version() == head_version()
        assert second.lists.active_values()["whitelist"] == ["keep@example.com"]


def test_open_migrates_an_older_database_and_keeps_its_data(tmp_path: Path) -> None:
    engine = create_storage_engine(sqlite_url(tmp_path / DB_FILENAME))
    upgrade(engine, "0001")  # the schema before the message log existed
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
    assert "message_log" not in inspect(engine).get_table_names()
    from appliance.storage.engine import Database
    from appliance.storage.lists import ListStore

    ListStore(Database(engine)).add("blacklist", "old@example.org", comment="from 0001")
    engine.dispose()

    with Storage.open(tmp_path) as storage:
        assert storage.schema_version() == head_version() != "0001"
        old = storage.lists.get("blacklist", "old@example.org")
        assert old is not None and old.comment == "from 0001"
        storage.messagelog.record_many([entry("after-upgrade")])
        assert storage.messagelog.get("after-upgrade") is not None


def test_migrations_produce_exactly_the_declared_schema(storage: Storage) -> None:
    with storage.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrations_render_for_postgresql() -> None:
    buffer = io.StringIO()
    config = Config(output_buffer=buffer)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", "postgresql://")
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE list_entries" in sql
    assert "CREATE TABLE message_recipients" in sql
    assert "ON DELETE CASCADE" in sql
    assert "DATETIME" not in sql  # TIMESTAMP WITHOUT TIME ZONE on PostgreSQL


def test_sqlite_specific_expressions_have_postgresql_forms() -> None:
    from sqlalchemy.dialects.postgresql import insert

    from appliance.storage.messagelog import _TimeBucket
    from appliance.storage.schema import list_entries

    bucket = select(_TimeBucket("day", message_log.c.time))
    assert "date_trunc('day', message_log.time)" in str(
        bucket.compile(dialect=postgresql.dialect())
    )
    stmt = insert(list_entries).on_conflict_do_nothing(index_elements=["list_name", "value"])
    assert "ON CONFLICT" in str(stmt.compile(dialect=postgresql.dialect()))


def test_concurrent_first_open_of_a_fresh_database(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    opened: list[Storage] = []

    def open_one() -> None:
        try:
            opened.append(Storage.open(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for storage in opened:
        assert storage.schema_version() == head_version()
        storage.close()
    assert errors == []


# -- list values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("list_name", "raw", "expected"),
    [
        ("whitelist", "  <John.Doe@Example.COM> ", "john.doe@example.com"),
        ("blacklist", "@Spam.Example.", "@spam.example"),
        ("redlist", "Example.ORG", "example.org"),
        ("spamlovers", "Abuse@*", "abuse@*"),
        ("noprocessing", "*@*.Example.com", "*@*.example.com"),
        ("whitelist", r"/^News\S+@Example\.com$/", r"/^News\S+@Example\.com$/"),
        ("ip_allow", " 192.0.2.7 ", "192.0.2.7/32"),
        ("ip_deny", "198.51.100.77/24", "198.51.100.0/24"),
        ("ip_deny", "2001:DB8:0:0::1/64", "2001:db8::/64"),
    ],
)
def test_values_are_normalised(list_name: str, raw: str, expected: str) -> None:
    assert normalise_value(list_name, raw) == expected


@pytest.mark.parametrize(
    ("list_name", "raw", "message"),
    [
        ("whitelist", "", "empty"),
        ("whitelist", "a b@example.com", "contains ' '"),
        ("whitelist", "a@b@example.com", "more than one '@'"),
        ("whitelist", "user@", "no domain"),
        ("whitelist", "user@example..com", "empty label"),
        ("whitelist", "*@*", "every address"),
        ("blacklist", "*", "every address"),
        ("whitelist", "/[unclosed/", "invalid regular expression"),
        ("whitelist", "../etc/passwd", "contains '/'"),
        ("whitelist", "evil\x00@example.com", "contains"),
        ("ip_allow", "300.1.1.1", "not an IP address"),
        ("ip_deny", "example.com", "not an IP address"),
        ("greylist", "a@example.com", "unknown list"),
    ],
)
def test_invalid_values_are_refused_with_clear_errors(
    storage: Storage, list_name: str, raw: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        storage.lists.add(list_name, raw)
    assert storage.lists.change_counter() == 0


def test_unknown_list_names_are_refused_everywhere(storage: Storage) -> None:
    lists = storage.lists
    for call in (
        lambda: lists.remove("whitelists", "a@example.com"),
        lambda: lists.entries("WHITELIST"),
        lambda: lists.count("nope"),
        lambda: lists.add_many("nope", ["a@example.com"]),
    ):
        with pytest.raises(ValueError, match="unknown list"):
            call()


def test_invalid_source_and_naive_expiry_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="unknown source"):
        storage.lists.add("whitelist", "a@example.com", source="web")
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.lists.add("whitelist", "a@example.com", expires_at=datetime(2030, 1, 1))


# -- list behaviour --------------------------------------------------------------------


def test_add_stores_metadata_and_get_finds_by_any_spelling(storage: Storage) -> None:
    added = storage.lists.add(
        "whitelist", "Friend@Example.com", comment="partner", added_by="admin", source="ui"
    )
    assert added.value == "friend@example.com"
    assert (added.comment, added.added_by, added.source) == ("partner", "admin", "ui")
    assert added.expires_at is None and added.created_at.tzinfo is UTC
    assert storage.lists.get("whitelist", "<FRIEND@example.COM>") == added
    assert storage.lists.get("blacklist", "friend@example.com") is None


def test_re_adding_extends_but_never_shortens_expiry(storage: Storage) -> None:
    lists = storage.lists
    soon, much_later = later(days=1), later(days=30)
    first = lists.add("autowhitelist", "x@example.com", expires_at=soon, source="auto")
    assert first.expires_at == soon
    extended = lists.add("autowhitelist", "X@example.com", expires_at=much_later, source="auto")
    assert extended.expires_at == much_later
    assert extended.created_at == first.created_at
    assert extended.updated_at >= first.updated_at
    not_shortened = lists.add("autowhitelist", "x@example.com", expires_at=soon, source="auto")
    assert not_shortened.expires_at == much_later
    permanent = lists.add("autowhitelist", "x@example.com", comment="by hand")
    assert permanent.expires_at is None and permanent.comment == "by hand"
    still_permanent = lists.add("autowhitelist", "x@example.com", expires_at=soon, source="auto")
    assert still_permanent.expires_at is None
    assert still_permanent.comment == "by hand"  # an empty comment does not erase it
    assert still_permanent.source == "auto"
    assert lists.count("autowhitelist") == 1


def test_expired_entries_are_inactive_and_purged(storage: Storage) -> None:
    lists = storage.lists
    lists.add("blacklist", "gone@example.com", expires_at=later(seconds=-1))
    lists.add("blacklist", "soon@example.com", expires_at=later(hours=1))
    lists.add("blacklist", "forever@example.com")
    lists.add("ip_deny", "203.0.113.0/24", expires_at=later(days=-3))

    active = lists.active_values()
    assert set(active) == set(LIST_NAMES)
    assert active["blacklist"] == ["forever@example.com", "soon@example.com"]
    assert active["ip_deny"] == []
    assert [e.value for e in lists.entries("blacklist")] == [
        "forever@example.com",
        "soon@example.com",
    ]
    with_expired = lists.entries("blacklist", include_expired=True)
    assert [e.value for e in with_expired] == [
        "forever@example.com",
        "gone@example.com",
        "soon@example.com",
    ]
    assert [e.is_expired() for e in with_expired] == [False, True, False]
    next_expiry = lists.next_expiry()
    assert next_expiry is not None and later(minutes=59) < next_expiry < later(hours=1, seconds=1)

    before = lists.change_counter()
    assert lists.purge_expired() == 2
    assert lists.change_counter() > before
    assert lists.count("blacklist", include_expired=True) == 2
    assert lists.purge_expired() == 0


def test_re_adding_an_expired_entry_revives_it(storage: Storage) -> None:
    storage.lists.add("whitelist", "back@example.com", expires_at=later(days=-1))
    assert storage.lists.active_values()["whitelist"] == []
    storage.lists.add("whitelist", "back@example.com", expires_at=later(days=1))
    assert storage.lists.active_values()["whitelist"] == ["back@example.com"]


def test_change_counter_increases_on_every_change(storage: Storage) -> None:
    lists = storage.lists
    seen = [lists.change_counter()]
    lists.add("whitelist", "a@example.com")
    seen.append(lists.change_counter())
    lists.add("whitelist", "a@example.com")  # a refresh is a change too (expiry, comment)
    seen.append(lists.change_counter())
    lists.add_many("autowhitelist", ["b@example.com", "c@example.com"], expires_at=later(days=1))
    seen.append(lists.change_counter())
    assert lists.remove("whitelist", "A@Example.com") is True
    seen.append(lists.change_counter())
    assert seen == sorted(set(seen)), seen
    assert lists.remove("whitelist", "a@example.com") is False
    assert lists.change_counter() == seen[-1]


def test_change_counter_is_shared_between_processes_views(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as proxy, Storage.open(tmp_path) as webui:
        before = proxy.lists.change_counter()
        webui.lists.add("ip_allow", "10.1.2.0/24", source="ui")
        assert proxy.lists.change_counter() > before
        assert proxy.lists.active_values()["ip_allow"] == ["10.1.2.0/24"]


def test_add_many_upserts_dedupes_and_validates_first(storage: Storage) -> None:
    lists = storage.lists
    lists.add("autowhitelist", "old@example.com", expires_at=later(days=1), source="auto")
    expiry = later(days=365)
    written = lists.add_many(
        "autowhitelist",
        ["Old@Example.com", "new@example.com", "NEW@example.com"],
        expires_at=expiry,
        source="auto",
    )
    assert written == 2
    assert {e.value: e.expires_at for e in lists.entries("autowhitelist")} == {
        "new@example.com": expiry,
        "old@example.com": expiry,
    }
    with pytest.raises(ValueError, match="contains ' '"):
        lists.add_many("autowhitelist", ["fine@example.com", "not valid@example.com"])
    assert lists.get("autowhitelist", "fine@example.com") is None
    assert lists.add_many("autowhitelist", []) == 0


def test_entries_search_and_paging(storage: Storage) -> None:
    lists = storage.lists
    for i in range(25):
        lists.add("whitelist", f"user{i:02d}@example.com", comment="partner" if i < 5 else "")
    page = lists.entries("whitelist", limit=10, offset=10)
    assert [e.value for e in page] == [f"user{i:02d}@example.com" for i in range(10, 20)]
    lists.add("whitelist", "100%_sure@example.org")
    assert lists.count("whitelist") == 26
    assert lists.count("whitelist", search="PARTNER") == 5
    assert [e.value for e in lists.entries("whitelist", search="user2")] == [
        f"user{i}@example.com" for i in range(20, 25)
    ]
    # LIKE wildcards in the search text are literal characters
    assert [e.value for e in lists.entries("whitelist", search="%_")] == ["100%_sure@example.org"]
    with pytest.raises(ValueError):
        lists.entries("whitelist", limit=-1)


# -- several writers on one file -------------------------------------------------------


def test_two_storage_instances_write_concurrently_without_losing_rows(tmp_path: Path) -> None:
    per_worker = 1500
    workers = [Storage.open(tmp_path), Storage.open(tmp_path)]
    errors: list[BaseException] = []

    def produce(index: int, storage: Storage) -> None:
        try:
            with MessageLogWriter(storage.messagelog, batch_size=100) as writer:
                for n in range(per_worker):
                    writer.submit(entry(f"w{index}-{n}", recipients=[f"r{n}@example.com"]))
                    if n % 100 == 0:  # list writes interleave with log batches
                        storage.lists.add("autowhitelist", f"r{index}-{n}@example.com")
                assert writer.flush(timeout=60)
                assert writer.dropped == 0 and writer.failed == 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i, s)) for i, s in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = workers[0]
    assert reader.messagelog.count() == 2 * per_worker
    assert reader.messagelog.count(recipient="r1499@") == 2
    assert reader.lists.count("autowhitelist") == 2 * (per_worker // 100)
    for storage in workers:
        storage.close()


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path

    from appliance.storage import MessageLogEntry, MessageLogWriter, Storage

    data_dir, prefix, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    storage = Storage.open(data_dir)
    writer = MessageLogWriter(storage.messagelog, batch_size=50)
    for n in range(count):
        writer.submit(MessageLogEntry(
            id=f"{prefix}-{n}", time=datetime.now(UTC), listener="inbound",
            client_ip="192.0.2.9", helo="h", sender="s@example.net",
            recipients=[f"r{n}@example.com"], subject="x", size=1, symbols=[("A", 1.0, "")],
            total=1.0, action="tag", reply="250 ok",
        ))
        if n % 50 == 0:
            storage.lists.add("autowhitelist", f"{prefix}-{n}@example.com", source="auto")
    assert writer.close(timeout=60)
    assert writer.dropped == 0 and writer.failed == 0
    storage.close()
    """
)


def test_two_processes_write_the_same_file_without_losing_rows(tmp_path: Path) -> None:
    count = 1000
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path), f"p{i}", str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err.decode()
    with Storage.open(tmp_path) as storage:
        assert storage.messagelog.count() == 2 * count
        assert storage.messagelog.count(action="tag", recipient="r999@example.com") == 2
        assert storage.lists.count("autowhitelist") == 2 * (count // 50)
        assert storage.lists.change_counter() == 2 * (count // 50)
