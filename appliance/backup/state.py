"""The record of backup runs in ``data_dir/backup-state.json``: when the last backup was
verified and how the last attempt ended. `postwall status`, the web UI and the metrics
read it; only `postwall backup` writes it (atomically).

It is never part of a backup, and a restore never overwrites it: restoring an old backup
must not make the appliance claim a recent verified backup.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_NAME = "backup-state.json"


@dataclass
class BackupState:
    last_verified: str | None = None  # UTC ISO time of the newest verified backup
    last_verified_name: str | None = None
    last_attempt: str | None = None
    last_result: str | None = None  # "ok" | "failed"
    last_error: str | None = None
    targets: list[str] = field(default_factory=list)  # where the last verified one went

    def verified_at(self) -> datetime | None:
        return _parse(self.last_verified)

    def attempted_at(self) -> datetime | None:
        return _parse(self.last_attempt)


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


def read_state(data_dir: Path) -> BackupState:
    try:
        raw: dict[str, Any] = json.loads(state_path(data_dir).read_text(encoding="utf-8"))
        known = {k: v for k, v in raw.items() if k in BackupState.__dataclass_fields__}
        return BackupState(**known)
    except (OSError, ValueError, TypeError):
        return BackupState()


def write_state(data_dir: Path, state: BackupState) -> None:
    path = state_path(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".backup-state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
