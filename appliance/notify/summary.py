"""The daily summary for the administrator: what the gateway did in the last 24 hours."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from appliance.notify.notifier import Notifier

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.storage.facade import Storage

log = logging.getLogger("postwall.notify")

BLOCKED_ACTIONS = ("reject", "discard", "quarantine")
ACTION_ORDER = ("deliver", "tag", "quarantine", "discard", "reject", "tempfail", "aborted")
TOP = 10


@dataclass(frozen=True, slots=True)
class Summary:
    since: datetime
    until: datetime
    by_action: dict[str, int]
    top_senders: list[tuple[str, int]]
    top_clients: list[tuple[str, int]]
    top_symbols: list[tuple[str, int, float]]
    learned_spam: int
    learned_ham: int
    learned_since: int
    min_spam: int
    min_ham: int
    open_incidents: list[str]

    @property
    def total(self) -> int:
        return sum(self.by_action.values())


def collect(storage: Storage, config: Config, until: datetime | None = None,
            hours: int = 24, open_incidents: list[str] | None = None) -> Summary:
    until = until or datetime.now(UTC)
    since = until - timedelta(hours=hours)
    log_ = storage.messagelog
    by_action: dict[str, int] = {}
    for counts in log_.counts_by_action(since, "hour", until=until).values():
        for action, n in counts.items():
            by_action[action] = by_action.get(action, 0) + n
    training = storage.training
    totals = training.totals()
    learned_since = sum(1 for e in training.entries(limit=100000) if e.learned_at >= since)
    return Summary(
        since=since, until=until, by_action=by_action,
        top_senders=log_.top_values("sender", since, actions=BLOCKED_ACTIONS, limit=TOP,
                                    until=until),
        top_clients=log_.top_values("client_ip", since, actions=BLOCKED_ACTIONS, limit=TOP,
                                    until=until),
        top_symbols=log_.top_symbols(since, limit=TOP, until=until),
        learned_spam=totals.spam, learned_ham=totals.ham, learned_since=learned_since,
        min_spam=config.filters.bayes.min_spam, min_ham=config.filters.bayes.min_ham,
        open_incidents=open_incidents or [],
    )


def render(summary: Summary, hostname: str) -> str:
    when = f"{summary.since:%Y-%m-%d %H:%M} to {summary.until:%Y-%m-%d %H:%M} UTC"
    lines = [f"Postwall {hostname}: the last 24 hours ({when})", ""]
    lines.append(f"Messages: {summary.total}")
    ordered = [a for a in ACTION_ORDER if a in summary.by_action] + sorted(
        a for a in summary.by_action if a not in ACTION_ORDER)
    for action in ordered:
        n = summary.by_action[action]
        share = 100.0 * n / summary.total if summary.total else 0.0
        lines.append(f"  {action:<11} {n:>8}  {share:5.1f}%")
    lines += ["", "Most blocked senders:"]
    lines += [f"  {n:>6}  {sender or '<>'}" for sender, n in summary.top_senders] or ["  none"]
    lines += ["", "Most blocked client addresses:"]
    lines += [f"  {n:>6}  {ip}" for ip, n in summary.top_clients] or ["  none"]
    lines += ["", "Most frequent symbols (messages, total score):"]
    lines += [f"  {n:>6}  {name} ({score:g})" for name, n, score in summary.top_symbols] or [
        "  none"]
    lines += ["", "Classifier training:",
              f"  learned (weighted): {summary.learned_spam} spam / {summary.learned_ham} ham; "
              f"{summary.learned_since} message(s) learned in these 24 hours"]
    missing = []
    if summary.learned_spam < summary.min_spam:
        missing.append(f"{summary.min_spam - summary.learned_spam} more spam")
    if summary.learned_ham < summary.min_ham:
        missing.append(f"{summary.min_ham - summary.learned_ham} more ham")
    if missing:
        lines.append(f"  not scoring yet: it needs {' and '.join(missing)} (filters.bayes "
                     "min_spam/min_ham)")
    else:
        lines.append("  trained enough to score")
    if summary.open_incidents:
        lines += ["", "Open incidents:"] + [f"  {i}" for i in summary.open_incidents]
    return "\n".join(lines) + "\n"


def build_text(notifier: Notifier, storage: Storage) -> str:
    opened = []
    if notifier.enabled:
        with notifier.book.locked() as state:
            opened = [f"{i.kind} [{i.key}]: {i.summary} (seen {i.count}x)"
                      for i in state.incidents.values()]
    summary = collect(storage, notifier.config, open_incidents=opened)
    return render(summary, notifier.config.smtp.hostname)


def send_summary(notifier: Notifier, storage: Storage) -> str:
    text = build_text(notifier, storage)
    route = notifier.send_text("daily summary", text, "summary")
    log.info("daily summary sent to %s (%s)", notifier.settings.admin_address, route)
    return route
