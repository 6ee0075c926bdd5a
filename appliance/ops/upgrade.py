"""`postwall upgrade`: a new release with automatic rollback.

    backup (the current release's `postwall backup`, unless --no-backup)
    -> install releases/VERSION (a new virtual environment)
    -> `releases/VERSION/bin/postwall check-config` against the live configuration
    -> maintenance window: snapshot the databases, switch `current`, restart, health gate
    -> on any failure after the switch: in a new window put back the databases the new
       release migrated (appliance/ops/databases.py), switch back, restart, gate again

`--rollback` switches to the `previous` release through the same window and gate. Only
one upgrade, backup or restore runs at a time (locks in data_dir/run).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.backup.errors import BackupError
from appliance.config.schema import Config
from appliance.ops.databases import ROLLBACK_DIR, DatabaseRollback
from appliance.ops.health import HealthGateFailed
from appliance.ops.maintenance import MaintenanceError, MaintenanceWindow, WindowReport
from appliance.ops.releases import ReleaseError, Releases, check_version, version_of_wheel
from appliance.ops.services import ServiceManager, service_manager
from appliance.rundir import ensure_run_dir, held

UPGRADE_LOCK = "upgrade.lock"
BACKUP_LOCK = "backup.lock"  # appliance/backup/lock.py: backups and restores hold it
BACKUP_TIMEOUT = 3600


class UpgradeError(Exception):
    """The upgrade did not happen or was rolled back; the message is the one line to print."""


@dataclass
class UpgradeResult:
    old: str | None
    new: str
    seconds: float
    window: WindowReport | None
    removed: list[str]


@contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    def refuse(holder: str) -> UpgradeError:
        return UpgradeError(f"{path.name} is held ({holder}); {what} not started")

    with held(path, what, refuse):
        yield


class Upgrader:
    def __init__(
        self, config: Config, config_path: Path, home: Path, *,
        services: ServiceManager | None = None, progress: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.releases = Releases(home)
        self.home = Path(home)
        self.services = services or service_manager(config, self.config_path, self.home)
        self.progress = progress
        self.run_dir = ensure_run_dir(config.data_dir)

    # -- the commands -----------------------------------------------------------------

    def upgrade(self, *, version: str | None = None, wheel: Path | None = None,
                keep: int | None = None, backup: bool = True) -> UpgradeResult:
        started = time.monotonic()
        with _locked(self.run_dir / UPGRADE_LOCK, "upgrade"):
            old = self._current_or_fail()
            if wheel is not None:
                new = version_of_wheel(wheel)
                if not wheel.is_file():
                    raise UpgradeError(f"{wheel}: no such file")
            elif version is not None:
                new = check_version(version)
            else:
                raise UpgradeError("say --to VERSION, --wheel FILE or --rollback")
            if new == old:
                raise UpgradeError(f"{new} is already the current release")
            if backup:  # first: a failed backup leaves everything as it was
                self._backup(old)
            spec = str(self._keep_wheel(wheel)) if wheel is not None else f"postwall=={new}"
            self.progress(f"installing {new} into {self.releases.path(new)}")
            self.releases.install(spec, new, pip_args=self.config.ops.pip_args,
                                  compile_bytecode=self.config.ops.compile_bytecode)
            self.progress(f"checking the live configuration with {new}")
            self.releases.check_config(new, self.config_path)
            report = self._switch_with_rollback(old, new, reason="upgrade")
            removed = self.releases.prune(keep or self.config.ops.keep_releases)
        return UpgradeResult(old, new, time.monotonic() - started, report, removed)

    def rollback(self) -> UpgradeResult:
        started = time.monotonic()
        with _locked(self.run_dir / UPGRADE_LOCK, "rollback"):
            old = self._current_or_fail()
            target = self.releases.previous()
            if target is None or not self.releases.is_complete(target):
                raise UpgradeError("no previous release to roll back to")
            self.releases.check_config(target, self.config_path)
            report = self._switch_with_rollback(old, target, reason="rollback")
        return UpgradeResult(old, target, time.monotonic() - started, report, [])

    # -- steps ------------------------------------------------------------------------

    def _current_or_fail(self) -> str:
        current = self.releases.current()
        if current is None or not self.releases.is_complete(current):
            # A release installed by the role has no mark yet: accept a working venv.
            if current is not None and (self.releases.path(current) / "bin" / "postwall").exists():
                return current
            raise UpgradeError(
                f"{self.releases.current_link} does not point at an installed release "
                "(install one with the postwall role or scripts/install first)"
            )
        return current

    def _keep_wheel(self, wheel: Path) -> Path:
        self.releases.wheels.mkdir(parents=True, exist_ok=True)
        kept = self.releases.wheels / wheel.name
        if kept.resolve() != wheel.resolve():
            tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
            tmp.write_bytes(wheel.read_bytes())
            os.replace(tmp, kept)
        return kept

    def _backup(self, current: str) -> None:
        """The current release makes the backup: it knows the state it wrote."""
        program = self.releases.path(current) / "bin" / "postwall"
        self.progress(f"backup first (postwall backup of {current}; --no-backup skips it)")
        try:
            result = subprocess.run(  # noqa: S603 - the current release's own program
                [str(program), "backup", "--config", str(self.config_path)],
                capture_output=True, text=True, timeout=BACKUP_TIMEOUT, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpgradeError(f"backup failed, nothing changed: {exc}") from exc
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise UpgradeError(
                f"backup failed, nothing changed: {lines[-1] if lines else result.returncode}"
            )

    def _window(self, reason: str) -> MaintenanceWindow:
        return MaintenanceWindow(
            self.config, reason, config_path=self.config_path, home=self.home,
            services=self.services, progress=self.progress,
        )

    def _switch_with_rollback(self, old: str, new: str, *, reason: str) -> WindowReport:
        links = (self.releases.current(), self.releases.previous())
        databases = DatabaseRollback(Path(self.config.data_dir), self.run_dir / ROLLBACK_DIR)
        with _locked(self.run_dir / BACKUP_LOCK, reason):
            try:
                with self._window(reason) as window:
                    # The services are stopped: the snapshot is exactly what the old
                    # release left, and nothing writes until the new one starts.
                    try:
                        databases.save(self.progress)
                    except (BackupError, OSError, sqlite3.Error) as exc:
                        raise MaintenanceError(f"cannot save the databases: {exc}") from exc
                    self.releases.switch(new)
                    self.progress(f"switched {self.releases.current_link} to {new}; restarting")
                databases.discard()  # the backup taken first is the lasting copy
                return window.report
            except (HealthGateFailed, ReleaseError, MaintenanceError, OSError) as exc:
                failure = exc
            if isinstance(failure, MaintenanceError):
                databases.discard()
                raise UpgradeError(f"{reason} to {new} not started: {failure}") from failure
            self.progress(f"{reason} to {new} failed: {failure}; switching back to {old}")
            try:
                with self._window("rollback") as window:
                    databases.put_back(self.progress)
                    self.releases.restore_links(*links)
            except (HealthGateFailed, ReleaseError, MaintenanceError, OSError,
                    sqlite3.Error) as second:
                raise UpgradeError(
                    f"{reason} to {new} failed ({failure}) AND the switch back to {old} "
                    f"failed ({second}): the appliance needs attention now (the databases "
                    f"of before the {reason} are in {databases.directory})"
                ) from second
            databases.discard()
            raise UpgradeError(
                f"{reason} to {new} failed and was rolled back; {old} serves again: {failure}"
            ) from failure
