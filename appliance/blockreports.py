"""Block-report digests: each user's mail that was quarantined, rejected or discarded
with a kept copy, with one-click links (release; release and whitelist the sender) when
the web UI's address is configured. Sent daily by worker 0, or on request (blockreport@).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from appliance import links, outbound
from appliance.digest_release import BLOCKED_ACTIONS

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.storage.facade import Storage
    from appliance.storage.messagelog import MessageLogEntry

log = logging.getLogger("postwall.blockreports")

LINK_PATH = "/blockreport/link"  # answered by the web UI with digest_release.use_link
SEARCH_LIMIT = 5000


def blocked_for(storage: Storage, user: str, since: datetime, limit: int) -> list[MessageLogEntry]:
    """`user`'s blocked messages with a kept copy since `since`, newest first."""
    user = user.lower()
    found = []
    for action in BLOCKED_ACTIONS:
        for entry in storage.messagelog.search(recipient=user, action=action, since=since,
                                               limit=limit):
            if entry.quarantine_path and user in (r.lower() for r in entry.recipients):
                found.append(entry)
    found.sort(key=lambda e: e.time, reverse=True)
    return found[:limit]


def render(config: Config, user: str, entries: list[MessageLogEntry], key: bytes | None,
           hours: int) -> str:
    settings = config.block_reports
    lines = [f"Mail to {user} that was blocked in the last {hours} hours: {len(entries)}.", ""]
    if not entries:
        lines.append("Nothing was blocked.")
    base = (settings.base_url or "").rstrip("/")
    lifetime = settings.link_days * 86400
    for number, entry in enumerate(entries, 1):
        when = entry.time.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"{number}. {when}  from <{entry.sender}>  score {entry.total:g}")
        lines.append(f"   Subject: {entry.subject[:120]}")
        if key is not None and base:
            for action, label in (("release", "release"),
                                  ("release_whitelist", "release and whitelist the sender")):
                token = links.sign(key, action, entry.id, user, lifetime)
                lines.append(f"   {label}: {base}{LINK_PATH}?token={token}")
        lines.append("")
    if key is not None and base:
        lines.append(f"Each message can be released once; the links work for "
                     f"{settings.link_days} days.")
    return "\n".join(lines)


def send_digest(storage: Storage, config: Config, user: str, *, hours: int = 24,
                skip_empty: bool = False) -> int:
    """Send `user` a digest; returns how many messages it listed."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    entries = blocked_for(storage, user, since, config.block_reports.max_entries)
    if skip_empty and not entries:
        return 0
    key = links.load_key(storage.data_dir) if config.block_reports.base_url else None
    content = outbound.compose(config, to=user, subject=f"Postwall: {len(entries)} blocked "
                               f"message(s) for {user}", text=render(config, user, entries,
                                                                    key, hours))
    outbound.send(config, "", [user], content)
    return len(entries)


def send_digests(storage: Storage, config: Config) -> int:
    """The daily run: a digest for every local recipient with blocked mail."""
    since = datetime.now(UTC) - timedelta(hours=24)
    users: set[str] = set()
    for action in BLOCKED_ACTIONS:
        for entry in storage.messagelog.search(action=action, since=since, limit=SEARCH_LIMIT):
            if entry.quarantine_path:
                users.update(r.lower() for r in entry.recipients if _is_local(config, r))
    sent = 0
    for user in sorted(users):
        try:
            if send_digest(storage, config, user, skip_empty=True):
                sent += 1
        except outbound.DeliveryError as exc:
            log.warning("block report for %s not sent: %s", user, exc)
    return sent


def _is_local(config: Config, address: str) -> bool:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    for local in config.local_domains:
        if domain == local or (local.startswith("*.") and domain.endswith(local[1:])):
            return True
    return False
