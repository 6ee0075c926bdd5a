"""Incidents: the rate limit that makes one problem one mail.

An event is reported with a kind (``clamd_down``) and a key (the socket). The first report
opens an incident and is mailed; repeats while it is open are only counted. A condition
(clamd down, a zone suspended) is closed by `resolve`, which mails "resolved" with the
count. A one-off event (a virus) has nothing to resolve: it closes by itself once no
repeat came for `quiet` seconds, with a closing mail only if there were repeats.

On top, a kind mails at most once per `interval`: incidents opened meanwhile wait
(``notified`` false) until `due` hands them out together.

The logic here is pure (a `State` and the time in, mails to send out); `IncidentFile`
keeps the state in one JSON file under an exclusive lock, so that every worker process
(and the command line) shares it: the lock is held only to decide, never while sending.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("postwall.notify")

# Events that have no "resolved" of their own: they close after a quiet time.
ONE_OFF_KINDS = frozenset({"virus", "backup_failed"})


@dataclass(slots=True)
class Incident:
    kind: str
    key: str
    summary: str
    detail: str
    opened: float
    last_seen: float
    count: int = 1
    notified: bool = False


@dataclass(frozen=True, slots=True)
class Mail:
    """A notification to send: `state` is "problem", "resolved" or "closed"."""

    kind: str
    key: str
    state: str
    summary: str
    detail: str
    count: int
    opened: float
    at: float


@dataclass(slots=True)
class State:
    incidents: dict[str, Incident] = field(default_factory=dict)
    last_sent: dict[str, float] = field(default_factory=dict)  # per kind
    summary_day: str = ""  # the UTC date of the last daily summary

    def to_json(self) -> dict[str, Any]:
        return {
            "incidents": {k: asdict(v) for k, v in self.incidents.items()},
            "last_sent": self.last_sent,
            "summary_day": self.summary_day,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        return cls(
            incidents={k: Incident(**v) for k, v in data.get("incidents", {}).items()},
            last_sent={str(k): float(v) for k, v in data.get("last_sent", {}).items()},
            summary_day=str(data.get("summary_day", "")),
        )


def incident_id(kind: str, key: str) -> str:
    return f"{kind}\x1f{key}"


def _mail(incident: Incident, state: str, now: float) -> Mail:
    return Mail(incident.kind, incident.key, state, incident.summary, incident.detail,
                incident.count, incident.opened, now)


def _may_send(state: State, kind: str, now: float, interval: float) -> bool:
    last = state.last_sent.get(kind)
    return last is None or now - last >= interval or now < last  # a clock set back


def report(state: State, kind: str, key: str, summary: str, detail: str, *, now: float,
           interval: float) -> Mail | None:
    """An event happened: a mail if it opens an incident and its kind may send now."""
    ident = incident_id(kind, key)
    incident = state.incidents.get(ident)
    if incident is not None:
        incident.count += 1
        incident.last_seen = now
        return None
    incident = Incident(kind, key, summary, detail, opened=now, last_seen=now)
    state.incidents[ident] = incident
    if not _may_send(state, kind, now, interval):
        return None  # waits for `due`
    incident.notified = True
    state.last_sent[kind] = now
    return _mail(incident, "problem", now)


def resolve(state: State, kind: str, key: str, *, now: float) -> Mail | None:
    """The condition cleared: a "resolved" mail if its problem was mailed. Resolutions
    do not count against the interval: an administrator waits for them."""
    incident = state.incidents.pop(incident_id(kind, key), None)
    if incident is None or not incident.notified:
        return None
    return _mail(incident, "resolved", now)


def open_incidents(state: State, kind: str) -> list[Incident]:
    return [i for i in state.incidents.values() if i.kind == kind]


def due(state: State, *, now: float, interval: float, quiet: float) -> list[Mail]:
    """What the passing of time sends: waiting incidents whose kind may send again (one
    mail per kind, naming all of them), and one-off events that went quiet."""
    mails: list[Mail] = []
    for ident, incident in list(state.incidents.items()):
        if incident.kind in ONE_OFF_KINDS and now - incident.last_seen >= quiet:
            del state.incidents[ident]
            if incident.notified and incident.count > 1:
                mails.append(_mail(incident, "closed", now))
    waiting: dict[str, list[Incident]] = {}
    for incident in state.incidents.values():
        if not incident.notified:
            waiting.setdefault(incident.kind, []).append(incident)
    for kind, incidents in sorted(waiting.items()):
        if not _may_send(state, kind, now, interval):
            continue
        state.last_sent[kind] = now
        for incident in incidents:
            incident.notified = True
        first = min(incidents, key=lambda i: i.opened)
        if len(incidents) == 1:
            mails.append(_mail(first, "problem", now))
            continue
        keys = ", ".join(i.key for i in incidents)
        detail = "\n\n".join(f"[{i.key}] {i.summary} (seen {i.count}x)\n{i.detail}".rstrip()
                             for i in incidents)
        mails.append(Mail(kind, keys, "problem", f"{len(incidents)} incidents: "
                          f"{first.summary} ...", detail, sum(i.count for i in incidents),
                          first.opened, now))
    return mails


class IncidentFile:
    """The shared `State` in ``<dir>/incidents.json``, changed under ``incidents.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "incidents.json"
        self.lock_path = directory / "incidents.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """The state, exclusively: changes made in the block are saved at its end."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._read()
            yield state
            self._write(state)
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> State:
        try:
            return State.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return State()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # A damaged file must not stop notifications: start again, say so.
            log.error("notification state %s unreadable (%s): starting afresh", self.path, exc)
            return State()

    def _write(self, state: State) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state.to_json(), sort_keys=True))
        os.replace(tmp, self.path)
