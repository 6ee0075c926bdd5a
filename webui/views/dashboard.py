"""The dashboard: health of the appliance, mail per action per hour and day, top symbols."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from flask import Blueprint, render_template

from appliance.status import CheckResult, overall, run_checks
from appliance.storage.types import utcnow
from webui import access, charts
from webui.state import state

bp = Blueprint("dashboard", __name__)

BLOCKING = ("reject", "discard", "quarantine")
HEALTH_CACHE_SECONDS = 10.0
_health_lock = threading.Lock()
_health: tuple[float, str, list[CheckResult]] | None = None


def health(fingerprint: str) -> list[CheckResult]:
    """The checks, run at most every few seconds however often the page is loaded."""
    global _health
    with _health_lock:
        now = time.monotonic()
        if _health is not None and _health[1] == fingerprint and \
                now - _health[0] < HEALTH_CACHE_SECONDS:
            return _health[2]
        results = run_checks(state().loaded.config)
        _health = (time.monotonic(), fingerprint, results)
        return results


def top_symbols(now: datetime) -> list[tuple[str, int, int]]:
    """(symbol, messages in 24 h, messages in 7 days), the week's most frequent first."""
    log = state().storage.messagelog
    week = log.top_symbols(now - timedelta(days=7), actions=BLOCKING, limit=10)
    day = {name: n for name, n, _ in log.top_symbols(now - timedelta(days=1),
                                                       actions=BLOCKING, limit=50)}
    return [(name, day.get(name, 0), n) for name, n, _ in week]


@bp.get("/")
@access.operator
def index() -> str:
    ui = state()
    loaded = ui.loaded
    from appliance.control import config_fingerprint

    checks = health(config_fingerprint(loaded.config))
    log = ui.storage.messagelog
    now = utcnow()
    hours = charts.buckets(now, 24, timedelta(hours=1))
    days = charts.buckets(now, 14, timedelta(days=1))
    hourly = charts.stacked(log.counts_by_action(hours[0], "hour"), hours, label_format="%H")
    daily = charts.stacked(log.counts_by_action(days[0], "day"), days, label_format="%d.%m")
    return render_template(
        "dashboard.html",
        checks=checks,
        overall=overall(checks),
        hourly=hourly,
        daily=daily,
        actions=charts.STACK_ORDER,
        top_symbols=top_symbols(now),
        test_mode=loaded.config.test_mode,
    )
