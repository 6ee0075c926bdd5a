"""Notifications to the administrator: events that need a human, one mail per incident.

Public API (other modules call only these):

- ``notify_event(kind, key, summary, detail="", *, config=None)`` — blocking (SMTP with
  timeouts); for command-line code such as the backup: ``notify_event("backup_failed",
  target, "backup to //nas/share failed", str(error), config=config)``. Returns what
  became of it ("logged", "counted", "postfix", "fallback", "spooled"). Never raises for
  delivery problems; raises ValueError for a malformed `kind`.
- ``notify_resolved(kind, key, *, config=None)`` — the condition cleared.
- ``notify_background(...)`` / ``resolve_background(...)`` — the same from the proxy's
  event loop or any hot path: queued to one notification thread, never blocking, never
  raising; a no-op in a process without ``configure(config)`` (e.g. ``postwall analyze``).

Kinds in use: virus, dnsbl_suspended, clamd_down, postfix_down, backup_failed, disk_full.
`key` tells incidents of one kind apart (a str, or a tuple joined with "/").
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from appliance.config.schema import Config
from appliance.notify.notifier import Notifier

__all__ = [
    "Notifier",
    "configure",
    "current",
    "notify_background",
    "notify_event",
    "notify_resolved",
    "resolve_background",
]

log = logging.getLogger("postwall.notify")

_current: Notifier | None = None
_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def configure(config: Config | None) -> None:
    """Use `config` for this process's notifications (None: background calls do nothing)."""
    global _current
    _current = Notifier(config) if config is not None else None


def current() -> Notifier | None:
    return _current


def _notifier(config: Config | None) -> Notifier | None:
    return Notifier(config) if config is not None else _current


def notify_event(kind: str, key: object, summary: str, detail: str = "", *,
                 config: Config | None = None) -> str:
    notifier = _notifier(config)
    if notifier is None:
        log.warning("event %s [%s]: %s (notifications not configured in this process)",
                    kind, key, summary)
        return "logged"
    return notifier.event(kind, key, summary, detail)


def notify_resolved(kind: str, key: object, *, config: Config | None = None) -> str:
    notifier = _notifier(config)
    return notifier.resolved(kind, key) if notifier is not None else "logged"


def _submit(name: str, call: object, *args: object) -> Future[str] | None:
    global _executor
    with _lock:
        if _executor is None:
            # One thread: mails go out in order, and a slow SMTP peer ties up only it.
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        executor = _executor
    try:
        future = executor.submit(call, *args)  # type: ignore[arg-type]
    except RuntimeError as exc:  # interpreter shutting down
        log.warning("%s not queued: %s", name, exc)
        return None
    future.add_done_callback(_log_failure)
    return future


def notify_background(kind: str, key: object, summary: str,
                      detail: str = "") -> Future[str] | None:
    notifier = _current
    if notifier is None:
        return None
    return _submit("notification", notifier.event, kind, key, summary, detail)


def resolve_background(kind: str, key: object) -> Future[str] | None:
    notifier = _current
    if notifier is None:
        return None
    return _submit("resolution", notifier.resolved, kind, key)


def _log_failure(future: Future[str]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("notification failed", exc_info=future.exception())
