"""The notifier: events in, rate-limited mails to the administrator out."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from appliance.config.schema import Config
from appliance.notify import delivery, incidents
from appliance.notify.incidents import IncidentFile, Mail

log = logging.getLogger("postwall.notify")

NOTIFY_DIRNAME = "notify"
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")

# What an administrator should do, per kind of event.
ADVICE = {
    "virus": "Nothing, unless it came from inside: the message was refused (554 5.7.1) and "
             "never delivered; filters.clamav.keep_virus keeps a copy in virus/.",
    "dnsbl_suspended": "The zone does not score while suspended. Use a local caching "
                       "resolver (public resolvers are refused by most lists), check the zone "
                       "name in filters.dnsbl/uribl, or remove a list that shut down.",
    "clamd_down": "Mail waits (451 4.7.1) or passes unscanned (on_error: fail_open). "
                  "Restart clamd (systemctl restart clamav-daemon) and read its log.",
    "postfix_down": "Every message gets a 4xx and senders retry. Look at "
                    "`systemctl status postfix`, `postfix check` and the mail log.",
    "backup_failed": "Read the backup's log, fix the target (share, credentials, space) "
                     "and run `postwall backup` by hand to check.",
    "disk_full": "Lower store.retention_days / store.max_files_per_folder, remove old kept "
                 "mail or grow the file system before the database cannot write.",
}


def clean(text: str, limit: int) -> str:
    return _CONTROL_RE.sub(" ", text).strip()[:limit]


def key_text(key: object) -> str:
    if isinstance(key, tuple | list):
        key = "/".join(str(part) for part in key)
    return clean(str(key), 200) or "-"


class Notifier:
    """One per process and configuration; its state is shared through the data dir."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.notifications
        self.directory = Path(config.data_dir) / NOTIFY_DIRNAME
        self.book = IncidentFile(self.directory)

    @property
    def enabled(self) -> bool:
        return self.settings.admin_address is not None

    # -- events ------------------------------------------------------------------------

    def event(self, kind: str, key: object, summary: str, detail: str = "") -> str:
        """Report an event; what became of it: "logged" (no admin address), "counted"
        (its incident is open or waits for the kind's interval) or the delivery route."""
        if not KIND_RE.match(kind):
            raise ValueError(f"bad notification kind {kind!r}")
        key, summary, detail = key_text(key), clean(summary, 300), detail[:10000]
        if not self.enabled:
            log.warning("event %s [%s]: %s (no notifications.admin_address: logged only)",
                        kind, key, summary)
            return "logged"
        with self.book.locked() as state:
            mail = incidents.report(state, kind, key, summary, detail, now=time.time(),
                                    interval=self.settings.min_interval_seconds)
        if mail is None:
            log.info("event %s [%s] counted into its incident: %s", kind, key, summary)
            return "counted"
        return self._send(mail)

    def resolved(self, kind: str, key: object) -> str:
        """The condition `kind`/`key` cleared: "none" if no incident was open."""
        key = key_text(key)
        if not self.enabled:
            return "logged"
        with self.book.locked() as state:
            mail = incidents.resolve(state, kind, key, now=time.time())
        if mail is None:
            return "none"
        return self._send(mail)

    def open_keys(self, kind: str) -> list[str]:
        if not self.enabled:
            return []
        with self.book.locked() as state:
            return [i.key for i in incidents.open_incidents(state, kind)]

    def tick(self) -> list[str]:
        """Send what waited (incidents held back by the interval, closing mails of quiet
        one-off events) and retry the spool; the delivery routes used."""
        if not self.enabled:
            return []
        with self.book.locked() as state:
            mails = incidents.due(state, now=time.time(),
                                  interval=self.settings.min_interval_seconds,
                                  quiet=self.settings.event_quiet_seconds)
        routes = [self._send(mail) for mail in mails]
        delivery.retry_spool(self.config, self.directory)
        return routes

    def summary_due(self, now: datetime | None = None) -> bool:
        """True once a day from summary_hour (UTC); claims the day, so one process sends."""
        if not (self.enabled and self.settings.summary_enabled):
            return False
        now = now or datetime.now(UTC)
        if now.hour < self.settings.summary_hour:
            return False
        today = now.date().isoformat()
        with self.book.locked() as state:
            if state.summary_day == today:
                return False
            state.summary_day = today
        return True

    # -- mails -------------------------------------------------------------------------

    def send_text(self, subject: str, text: str, kind: str) -> str:
        """Mail `text` to the administrator now, not rate-limited (summary, test)."""
        if self.settings.admin_address is None:
            raise ValueError("notifications.admin_address is not set")
        envelope = delivery.compose(self.config, to=self.settings.admin_address,
                                    subject=self._subject(subject), text=text, kind=kind)
        return delivery.deliver(self.config, self.directory, envelope)

    def _subject(self, text: str) -> str:
        return clean(f"[Postwall {self.config.smtp.hostname}] {text}", 200)

    def _send(self, mail: Mail) -> str:
        assert self.settings.admin_address is not None
        envelope = delivery.compose(self.config, to=self.settings.admin_address,
                                    subject=self._subject(subject_of(mail)),
                                    text=body_of(mail, self.config.smtp.hostname),
                                    kind=f"{mail.kind}; {mail.state}")
        route = delivery.deliver(self.config, self.directory, envelope)
        log.info("notification %s %s [%s] -> %s (%s)", mail.state, mail.kind, mail.key,
                 self.settings.admin_address, route)
        return route


def subject_of(mail: Mail) -> str:
    label = {"problem": "PROBLEM", "resolved": "RESOLVED", "closed": "ENDED"}[mail.state]
    return f"{label}: {mail.summary}"


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def body_of(mail: Mail, hostname: str) -> str:
    lines = [f"{subject_of(mail)}", "", f"Appliance: {hostname}",
             f"Event:     {mail.kind} [{mail.key}]", f"First seen: {_when(mail.opened)}"]
    if mail.state == "problem":
        lines.append(f"Seen:      {mail.count} time(s) so far; repeats are counted, not "
                     "mailed, until it clears.")
    else:
        lines.append(f"Ended:     {_when(mail.at)} after {mail.count} occurrence(s), "
                     f"{_duration(mail.at - mail.opened)}.")
    if mail.detail:
        lines += ["", mail.detail]
    advice = ADVICE.get(mail.kind)
    if advice and mail.state == "problem":
        lines += ["", f"What to do: {advice}"]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
