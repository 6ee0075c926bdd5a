"""One backup, start to end: check targets, stage, pack, encrypt, verify, upload,
apply retention, record the result. Any failure ends the run with BackupError and is
recorded; the last verified backup then stays the one before."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.backup import retention, state
from appliance.backup.archive import BackupName, make_name, pack
from appliance.backup.contents import stage
from appliance.backup.crypto import encrypt_file, load_key
from appliance.backup.errors import BackupError
from appliance.backup.lock import exclusive_run
from appliance.backup.request import consume_request
from appliance.backup.targets import Target, configured_targets
from appliance.backup.verify import VerifyReport, verify_backup
from appliance.config.loader import LoadedConfig
from appliance.config.schema import Config
from appliance.notify import notify_event, notify_resolved

Progress = Callable[[str], None]


@dataclass
class BackupResult:
    name: str
    size: int
    seconds: float
    files: int
    targets: list[str]
    verified: VerifyReport | None
    deleted: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        removed = sum(len(v) for v in self.deleted.values())
        check = "verified" if self.verified else "NOT verified (backup.verify is off)"
        return (f"backup {self.name}: {self.size / 1e6:.2f} MB, {self.files} files, {check}, "
                f"stored on {len(self.targets)} target(s), {removed} old backup(s) removed, "
                f"{self.seconds:.1f} s")


def work_dir(data_dir: Path, prefix: str) -> Path:
    """Scratch space under data_dir/run: the same file system as the kept mail (hard
    links), private (mode 0700), removed by the caller."""
    run_dir = Path(data_dir) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=run_dir))


def run_backup(
    loaded: LoadedConfig,
    *,
    progress: Progress = lambda _line: None,
    now: datetime | None = None,
    host: str | None = None,
    targets: list[Target] | None = None,
) -> BackupResult:
    config = loaded.config
    settings = config.backup
    data_dir = Path(config.data_dir)
    # Taken first, whatever happens next: a request left behind would make the path
    # unit start the service again and again.
    request = consume_request(data_dir)
    requested_by = request.by if request else None
    if targets is None:
        if not settings.configured:
            raise BackupError("no backup target: set backup.directory and/or backup.smb")
        targets = configured_targets(settings)
    started = time.monotonic()
    now = now or datetime.now(UTC)
    with exclusive_run(data_dir, "backup"):
        work: Path | None = None
        state.record_start(data_dir, now, requested_by)
        try:
            key = load_key(settings.encryption_key_file) if settings.encryption_key_file else None
            for target in targets:
                progress(f"checking {target.label}")
                target.check()
            work = work_dir(data_dir, "backup-")
            manifest = stage(loaded, work / "staging", progress=progress,
                             host=host or socket.gethostname(), now=now)
            manifest.encrypted = key is not None
            name = _unused_name(make_name(manifest.host, now, encrypted=key is not None), targets)
            progress(f"packing {len(manifest.files)} files")
            tarball = work / "backup.tar.gz"
            pack(work / "staging", manifest, tarball)
            shutil.rmtree(work / "staging")
            final = work / name.name
            if key is not None:
                progress("encrypting")
                encrypt_file(tarball, final, key)
                tarball.unlink()
            else:
                os.replace(tarball, final)
            report = None
            if settings.verify:
                progress("verifying: a trial restore into a scratch directory")
                report = verify_backup(final, Path(tempfile.mkdtemp(dir=work)), key)
            result = BackupResult(name.name, final.stat().st_size, 0.0, len(manifest.files),
                                  [], report, notes=list(manifest.notes))
            for target in targets:
                progress(f"uploading to {target.label} and reading it back")
                target.upload(final, name.name)
                result.targets.append(target.label)
            keep = settings.retention
            for target in targets:
                doomed = retention.to_delete(
                    target.backups(name.host), lambda b: b.when,
                    daily=keep.daily, weekly=keep.weekly, monthly=keep.monthly,
                )
                for old in doomed:
                    if old.name == name.name:
                        continue
                    target.delete(old.name)
                    result.deleted.setdefault(target.label, []).append(old.name)
            result.seconds = time.monotonic() - started
            state.record_run(data_dir, state.RunRecord(
                started=state.stamp(now), finished=state.stamp(datetime.now(UTC)),
                result=state.VERIFIED if report is not None else state.UNVERIFIED,
                seconds=round(result.seconds, 2), name=name.name, size=result.size,
                requested_by=requested_by,
                targets=[_listing(target, name.host) for target in targets],
            ))
            if report is not None:
                notify_resolved("backup_failed", "backup", config=config)
            return result
        except BackupError as exc:
            _failed(config, data_dir, str(exc), now, started, requested_by)
            raise
        except Exception as exc:
            _failed(config, data_dir, f"{type(exc).__name__}: {exc}", now, started,
                    requested_by)
            raise BackupError(f"backup failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)


def _listing(target: Target, host: str) -> state.TargetRecord:
    """What is on the target after retention, for the history (the web UI cannot ask
    the targets itself: it may not read the credentials). A failed listing does not
    undo a verified upload; it is noted instead."""
    try:
        sizes = target.sizes()
        backups = [state.StoredBackup(b.name, sizes.get(b.name), state.stamp(b.when))
                   for b in target.backups(host)]
    except BackupError as exc:
        return state.TargetRecord(target.label, [], str(exc))
    return state.TargetRecord(target.label, backups)


def _failed(config: Config, data_dir: Path, reason: str, now: datetime, started: float,
            requested_by: str | None) -> None:
    """Record the failure for `postwall status` and tell the administrator (one mail per
    incident: repeated nightly failures are counted, and a verified backup resolves it)."""
    state.record_run(data_dir, state.RunRecord(
        started=state.stamp(now), finished=state.stamp(datetime.now(UTC)),
        result=state.FAILED, seconds=round(time.monotonic() - started, 2), error=reason,
        requested_by=requested_by,
    ))
    notify_event("backup_failed", "backup", "the backup failed or did not verify", reason,
                 config=config)


def _unused_name(name: BackupName, targets: list[Target]) -> BackupName:
    """Two runs within one second would share a name; the later one moves on a second."""
    taken = {n for target in targets for n in target.names()}
    while name.name in taken:
        name = BackupName(name.when + timedelta(seconds=1), name.host, name.encrypted)
    return name
