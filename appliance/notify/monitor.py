"""Worker 0's watch over what mail flow depends on: Postfix, clamd and the disk.

Every `monitor_interval_seconds` it runs the same checks as `postwall status` (in a
thread, each with its own timeout), opens an incident for what is down and resolves it
when it is back; then it sends what waited, retries the spool and, once a day, the
summary. Nothing here may stop the maintenance tick: errors are logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from appliance import status
from appliance.config.schema import Config
from appliance.notify.notifier import Notifier
from appliance.status import State

log = logging.getLogger("postwall.notify")


def disk_usage_percent(path: Path) -> tuple[float, str]:
    """The larger of space and inode use of `path`'s file system, and a description."""
    usage = shutil.disk_usage(path)
    inodes = os.statvfs(path)
    space = 100.0 * usage.used / usage.total if usage.total else 0.0
    used_inodes = inodes.f_files - inodes.f_ffree
    inode = 100.0 * used_inodes / inodes.f_files if inodes.f_files else 0.0
    text = (f"{space:.1f}% of the space ({usage.free / 2**30:.1f} GiB free), "
            f"{inode:.1f}% of the inodes used")
    return max(space, inode), text


def check_conditions(notifier: Notifier) -> None:
    """Open or resolve the clamd_down, postfix_down and disk_full incidents (blocking)."""
    config = notifier.config
    postfix = status.check_postfix(config)
    where = f"{config.downstream.host}:{config.downstream.port}"
    if postfix.state is State.FAIL:
        notifier.event("postfix_down", where, f"Postfix (downstream) down: {postfix.summary}",
                       "The proxy relays every accepted message in-line to this Postfix.")
    else:
        notifier.resolved("postfix_down", where)
    clamav = config.filters.clamav
    if str(clamav.mode) != "off":
        clamd = status.check_clamd(config)
        if clamd.state is State.FAIL:
            notifier.event("clamd_down", clamav.address, f"clamd down: {clamd.summary}",
                           f"filters.clamav.on_error: {clamav.on_error or 'tempfail'}")
        elif clamd.state is State.OK:
            notifier.resolved("clamd_down", clamav.address)
    data_dir = Path(config.data_dir)
    try:
        percent, text = disk_usage_percent(data_dir)
    except OSError as exc:
        log.warning("disk usage of %s unknown: %s", data_dir, exc)
        return
    threshold = config.notifications.disk_percent
    if percent >= threshold:
        notifier.event("disk_full", str(data_dir), f"disk of {data_dir} {percent:.0f}% used "
                       f"(threshold {threshold:g}%)", text)
    else:
        notifier.resolved("disk_full", str(data_dir))


class Monitor:
    """Called on every maintenance tick of worker 0; acts every monitor interval."""

    def __init__(self) -> None:
        self._last = 0.0
        self._running: asyncio.Task[None] | None = None

    async def tick(self, config: Config, storage: object | None) -> None:
        settings = config.notifications
        if settings.admin_address is None:
            return
        if self._running is not None and not self._running.done():
            return  # a slow check (a hanging peer) must not pile up runs
        if time.monotonic() - self._last < settings.monitor_interval_seconds:
            return
        self._last = time.monotonic()
        # Not awaited: the maintenance tick goes on while the checks wait on sockets.
        self._running = asyncio.create_task(asyncio.to_thread(self._run, config, storage))
        self._running.add_done_callback(_log_crash)

    @staticmethod
    def _run(config: Config, storage: object | None) -> None:
        notifier = Notifier(config)
        check_conditions(notifier)
        notifier.tick()
        if storage is not None and notifier.summary_due():
            from appliance.notify.summary import send_summary

            send_summary(notifier, storage)  # type: ignore[arg-type]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("notification monitor failed", exc_info=task.exception())
