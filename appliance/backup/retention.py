"""Which backups to keep: the newest of each of the last N days, ISO weeks and months.

Pure logic on backup times (grandfather-father-son, as restic's and borg's `--keep-daily`,
`--keep-weekly`, `--keep-monthly`): periods are counted over the days (weeks, months)
that *have* a backup, newest first, so a week without backups does not use up a slot.
The newest backup is always kept, whatever the settings say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

T = TypeVar("T")


def _day(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month, moment.day)


def _week(moment: datetime) -> tuple[int, ...]:
    iso = moment.isocalendar()
    return (iso.year, iso.week)


def _month(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month)


def to_keep(
    items: Iterable[T], when: Callable[[T], datetime], *, daily: int, weekly: int, monthly: int
) -> set[T]:
    ordered = sorted(items, key=when, reverse=True)
    keep: set[T] = set(ordered[:1])
    for count, period in ((daily, _day), (weekly, _week), (monthly, _month)):
        seen: set[tuple[int, ...]] = set()
        for item in ordered:
            if len(seen) >= count:
                break
            key = period(when(item))
            if key not in seen:
                seen.add(key)
                keep.add(item)  # the newest backup of this period
    return keep


def to_delete(
    items: Iterable[T], when: Callable[[T], datetime], *, daily: int, weekly: int, monthly: int
) -> list[T]:
    items = list(items)
    keep = to_keep(items, when, daily=daily, weekly=weekly, monthly=monthly)
    return sorted((i for i in items if i not in keep), key=when)
