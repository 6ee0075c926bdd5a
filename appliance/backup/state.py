"""The record of backup runs in ``data_dir/backup-state.json``: when the last backup was
verified, how the last attempt ended, a short history of recent runs (each with the
backups it saw on every target after retention) and the run in progress. `postwall
status`, the web UI and the metrics read it; only `postwall backup` writes it
(atomically).

`postwall backup` runs as root, the readers as the unprivileged service user: the file is
mode 0640 with the data directory's group, and holds no secret (target labels are a
directory path or a share's UNC name, never credentials or keys).

It is never part of a backup, and a restore never overwrites it: restoring an old backup
must not make the appliance claim a recent verified backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_NAME = "backup-state.json"
STATE_MODE = 0o640
HISTORY_KEEP = 20  # runs kept in the file, newest first

VERIFIED, UNVERIFIED, FAILED = "verified", "unverified", "failed"


@dataclass
class StoredBackup:
    """One backup file a run saw on a target (after its retention)."""

    name: str
    size: int | None
    time: str  # UTC ISO time, from the backup's name


@dataclass
class TargetRecord:
    label: str  # "directory /var/backups/postwall" or the share's UNC name and port
    backups: list[StoredBackup] = field(default_factory=list)  # oldest first
    error: str | None = None  # the listing after the upload failed


@dataclass
class RunRecord:
    started: str  # UTC ISO times
    finished: str
    result: str  # VERIFIED | UNVERIFIED (backup.verify is off) | FAILED
    seconds: float
    name: str | None = None
    size: int | None = None
    error: str | None = None
    requested_by: str | None = None  # who clicked "Back up now" (None: timer or shell)
    targets: list[TargetRecord] = field(default_factory=list)

    def started_at(self) -> datetime | None:
        return _parse(self.started)

    def finished_at(self) -> datetime | None:
        return _parse(self.finished)


@dataclass
class RunningRecord:
    """The run in progress; cleared when it is recorded. A killed run leaves it behind,
    so readers also ask whether its process still exists (`running_now`)."""

    started: str
    pid: int
    requested_by: str | None = None

    def started_at(self) -> datetime | None:
        return _parse(self.started)


@dataclass
class BackupState:
    last_verified: str | None = None  # UTC ISO time of the newest verified backup
    last_verified_name: str | None = None
    last_attempt: str | None = None
    last_result: str | None = None  # "ok" | "failed"
    last_error: str | None = None
    targets: list[str] = field(default_factory=list)  # where the last verified one went
    history: list[RunRecord] = field(default_factory=list)  # newest first
    running: RunningRecord | None = None

    def verified_at(self) -> datetime | None:
        return _parse(self.last_verified)

    def attempted_at(self) -> datetime | None:
        return _parse(self.last_attempt)

    def running_now(self) -> RunningRecord | None:
        """The run in progress if its process is still alive (a signal 0 to a root
        process from another user answers EPERM: it exists)."""
        if self.running is None:
            return None
        try:
            os.kill(self.running.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return self.running


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATE_NAME


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}


def _run_from(raw: Any) -> RunRecord | None:
    """A history entry, or None for one that does not parse (skipped, not fatal)."""
    try:
        run = RunRecord(**_known(RunRecord, raw))
        run.targets = [
            TargetRecord(**{**_known(TargetRecord, t),
                            "backups": [StoredBackup(**_known(StoredBackup, b))
                                        for b in t.get("backups", [])]})
            for t in raw.get("targets", [])
        ]
        return run
    except (TypeError, AttributeError):
        return None


def read_state(data_dir: Path) -> BackupState:
    try:
        raw: dict[str, Any] = json.loads(state_path(data_dir).read_text(encoding="utf-8"))
        state = BackupState(**_known(BackupState, raw))
    except (OSError, ValueError, TypeError):
        return BackupState()
    history = raw.get("history")
    state.history = [r for r in map(_run_from, history if isinstance(history, list) else [])
                     if r is not None]
    try:
        running = raw.get("running")
        state.running = RunningRecord(**_known(RunningRecord, running)) if running else None
    except (TypeError, AttributeError):
        state.running = None
    return state


def write_state(data_dir: Path, state: BackupState) -> None:
    """Atomically, mode 0640 with the data directory's group: root writes it, the
    service user (proxy metrics, web UI) reads it."""
    path = state_path(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".backup-state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle, indent=1, sort_keys=True)
            handle.flush()
            os.fchmod(handle.fileno(), STATE_MODE)
            group = path.parent.stat().st_gid
            # Not root and not in that group (a test, a hand-made directory): keep ours.
            if os.fstat(handle.fileno()).st_gid != group:
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), -1, group)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def record_start(data_dir: Path, now: datetime, requested_by: str | None) -> None:
    state = read_state(data_dir)
    state.running = RunningRecord(stamp(now), os.getpid(), requested_by)
    write_state(data_dir, state)


def record_run(data_dir: Path, run: RunRecord) -> None:
    """Add a finished run to the history (newest first, HISTORY_KEEP kept) and update
    the summary fields `postwall status` reads: a failure leaves the last verified
    backup what it was; an unverified run (backup.verify off) changes neither."""
    state = read_state(data_dir)
    # A backup's age is that of its snapshot: the run's start, as in its name.
    if run.result == VERIFIED:
        state.last_verified, state.last_verified_name = run.started, run.name
        state.targets = [t.label for t in run.targets]
        state.last_attempt, state.last_result, state.last_error = run.started, "ok", None
    elif run.result == FAILED:
        state.last_attempt, state.last_result, state.last_error = (
            run.started, "failed", run.error)
    state.history = [run, *state.history][:HISTORY_KEEP]
    state.running = None
    write_state(data_dir, state)


def record_success(data_dir: Path, name: str, targets: list[str], now: datetime) -> None:
    state = read_state(data_dir)
    stamp = now.astimezone(UTC).isoformat(timespec="seconds")
    state.last_verified, state.last_verified_name, state.targets = stamp, name, targets
    state.last_attempt, state.last_result, state.last_error = stamp, "ok", None
    write_state(data_dir, state)


def record_failure(data_dir: Path, error: str, now: datetime) -> None:
    state = read_state(data_dir)  # the last verified backup stays what it was
    state.last_attempt = now.astimezone(UTC).isoformat(timespec="seconds")
    state.last_result, state.last_error = "failed", error
    write_state(data_dir, state)


class BackupAgeCollector:
    """Prometheus collector: the age of the last verified backup, read at scrape time."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import GaugeMetricFamily

        state = read_state(self.data_dir)
        verified = state.verified_at()
        age = GaugeMetricFamily(
            "postwall_backup_last_verified_age_seconds",
            "Seconds since the last verified backup (NaN: none yet)",
        )
        age.add_metric([], (datetime.now(UTC) - verified).total_seconds() if verified
                       else float("nan"))
        yield age
        failed = GaugeMetricFamily(
            "postwall_backup_last_run_failed", "1 if the last backup run failed"
        )
        failed.add_metric([], 1.0 if state.last_result == "failed" else 0.0)
        yield failed
