"""Stacked bar charts of messages per action, drawn as SVG rectangles (no JavaScript).

Pure: takes counts per time bucket and returns geometry that a template renders; colours
come from CSS classes, since the Content-Security-Policy allows no inline styles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Bottom to top: what matters most (blocked mail) sits on the baseline.
STACK_ORDER = ("reject", "discard", "quarantine", "tag", "tempfail", "deliver", "aborted")


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    action: str
    count: int


@dataclass
class Bar:
    start: datetime
    label: str
    total: int
    rects: list[Rect] = field(default_factory=list)
    x: float = 0.0
    width: float = 0.0


@dataclass
class Chart:
    width: int
    height: int
    plot_height: int
    head_room: int
    bars: list[Bar]
    peak: int
    ticks: list[tuple[float, int]]  # (y, value) for the grid lines
    totals: dict[str, int]


def buckets(end: datetime, count: int, step: timedelta) -> list[datetime]:
    """The `count` bucket starts ending with the one that contains `end`."""
    if step == timedelta(hours=1):
        last = end.replace(minute=0, second=0, microsecond=0)
    else:
        last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    return [last - step * i for i in range(count - 1, -1, -1)]


def stacked(
    counts: dict[datetime, dict[str, int]],
    starts: list[datetime],
    *,
    label_format: str,
    width: int = 1120,
    height: int = 180,
    label_room: int = 18,
    head_room: int = 8,
) -> Chart:
    plot_height = height - label_room - head_room
    totals: dict[str, int] = {}
    peak = 0
    for start in starts:
        row = counts.get(start, {})
        peak = max(peak, sum(row.values()))
        for action, n in row.items():
            totals[action] = totals.get(action, 0) + n
    scale_top = _nice_ceiling(peak)
    slot = width / max(1, len(starts))
    bar_width = max(1.0, slot * 0.75)
    bars = []
    for index, start in enumerate(starts):
        row = counts.get(start, {})
        bar = Bar(start, start.strftime(label_format), sum(row.values()),
                  x=index * slot + (slot - bar_width) / 2, width=bar_width)
        y = float(plot_height)
        for action in STACK_ORDER:
            n = row.get(action, 0)
            if not n:
                continue
            h = plot_height * n / scale_top
            y -= h
            bar.rects.append(Rect(bar.x, round(y, 2), round(bar_width, 2), round(h, 2),
                                  action, n))
        bars.append(bar)
    ticks = [(round(plot_height - plot_height * v / scale_top, 2), v)
             for v in _tick_values(scale_top)]
    return Chart(width, height, plot_height, head_room, bars, peak, ticks, totals)


def _nice_ceiling(value: int) -> int:
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(value)) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        top = int(factor * magnitude)
        if top >= value:
            return top
    return value


def _tick_values(top: int) -> list[int]:
    """Grid lines at round values: at most five, each a multiple of one step."""
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            if top % step == 0 and top // step <= 5:
                return list(range(step, top + 1, step))
        magnitude *= 10
