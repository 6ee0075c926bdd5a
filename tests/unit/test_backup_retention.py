"""Retention of backups: the newest per day, ISO week and month (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from appliance.backup.retention import to_delete, to_keep

START = datetime(2024, 1, 1, 2, 30, tzinfo=UTC)  # a Monday


def nightly(days: int, per_day: int = 1) -> list[datetime]:
    return [START + timedelta(days=d, hours=h) for d in range(days) for h in range(per_day)]


def keep(items, **counts):  # type: ignore[no-untyped-def]
    return sorted(to_keep(items, lambda t: t, **counts))


def test_daily_keeps_the_newest_backup_of_each_of_the_last_days():
    times = nightly(10, per_day=3)
    kept = keep(times, daily=3, weekly=0, monthly=0)
    assert kept == [START + timedelta(days=d, hours=2) for d in (7, 8, 9)]


def test_weekly_and_monthly_add_the_newest_of_older_periods():
    times = nightly(70)  # 1 Jan .. 10 Mar 2024
    kept = keep(times, daily=2, weekly=2, monthly=3)
    expected = {
        START + timedelta(days=69), START + timedelta(days=68),  # daily: 10, 9 Mar
        START + timedelta(days=69 - 1 - 6),  # newest of the previous ISO week: Sun 3 Mar
        datetime(2024, 2, 29, 2, 30, tzinfo=UTC),  # newest of February
        datetime(2024, 1, 31, 2, 30, tzinfo=UTC),  # newest of January
    }
    assert set(kept) == expected


def test_periods_without_backups_do_not_use_up_slots():
    times = [START, START + timedelta(days=30), START + timedelta(days=60)]
    assert keep(times, daily=3, weekly=0, monthly=0) == times


def test_the_newest_backup_is_kept_even_with_zero_everywhere():
    times = nightly(5)
    assert keep(times, daily=0, weekly=0, monthly=0) == [times[-1]]


def test_to_delete_is_the_rest_oldest_first():
    times = nightly(10)
    doomed = to_delete(times, lambda t: t, daily=7, weekly=0, monthly=0)
    assert doomed == times[:3]
    assert to_delete([], lambda t: t, daily=1, weekly=1, monthly=1) == []
