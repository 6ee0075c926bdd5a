"""Template filters: times in UTC, sizes, scores, and the colour of each action."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# As in ASSP's maillog tail: spam red, ham green, ok grey; tags and deferrals amber.
ACTION_CLASSES = {
    "deliver": "ham",
    "tag": "tagged",
    "quarantine": "spam",
    "discard": "spam",
    "reject": "spam",
    "tempfail": "deferred",
    "aborted": "ok",
}
# Delivered without scoring (white/noprocessing/allow lists): "ok mail", grey.
OK_SYMBOLS = frozenset({"WHITELISTED", "AUTOWHITELISTED", "NOPROCESSING", "IP_ALLOWED"})


def action_class(action: str, symbols: Any = None) -> str:
    if action == "deliver" and symbols and any(s[0] in OK_SYMBOLS for s in symbols):
        return "ok"
    return ACTION_CLASSES.get(action, "ok")


def dt(value: datetime | float | None, seconds: bool = True) -> str:
    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def size(value: int | None) -> str:
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def score(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if value else "0"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


FILTERS = {"dt": dt, "size": size, "score": score, "duration": duration}
