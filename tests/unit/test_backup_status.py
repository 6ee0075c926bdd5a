"""The `backup` status check and the state file it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.backup.state import BackupAgeCollector, read_state, record_failure, record_success
from appliance.config.schema import Config
from appliance.status import State, check_backup

NAME = "postwall-mx-20240101T000000Z.tar.gz"


def config(tmp_path: Path, configured: bool = True) -> Config:
    backup = {"directory": str(tmp_path / "backups")} if configured else {}
    return Config.model_validate({"data_dir": str(tmp_path), "backup": backup})


def test_unknown_without_targets_warn_before_the_first_backup(tmp_path: Path):
    assert check_backup(config(tmp_path, configured=False)).state is State.UNKNOWN
    assert check_backup(config(tmp_path)).state is State.WARN


def test_age_decides_between_ok_warn_and_fail(tmp_path: Path):
    now = datetime.now(UTC)
    for hours, expected in ((1, State.OK), (30, State.WARN), (100, State.FAIL)):
        record_success(tmp_path, NAME, ["directory x"], now - timedelta(hours=hours))
        outcome = check_backup(config(tmp_path))
        assert outcome.state is expected, (hours, outcome)
        assert NAME in outcome.summary


def test_a_failed_run_fails_the_check_but_keeps_the_last_verified(tmp_path: Path):
    verified = datetime.now(UTC) - timedelta(hours=2)
    record_success(tmp_path, NAME, ["directory x"], verified)
    record_failure(tmp_path, "SMB share: logon refused", datetime.now(UTC))
    state = read_state(tmp_path)
    assert state.verified_at() == verified.replace(microsecond=0)
    outcome = check_backup(config(tmp_path))
    assert outcome.state is State.FAIL and "logon refused" in outcome.summary
    metrics = {m.name: m.samples[0].value for m in BackupAgeCollector(tmp_path).collect()}
    assert 7100 < metrics["postwall_backup_last_verified_age_seconds"] < 7400
    assert metrics["postwall_backup_last_run_failed"] == 1.0


def test_a_damaged_state_file_reads_as_no_backup(tmp_path: Path):
    (tmp_path / "backup-state.json").write_text("{not json")
    assert read_state(tmp_path).last_verified is None
    assert check_backup(config(tmp_path)).state is State.WARN
