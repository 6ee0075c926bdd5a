"""Backups to a real Samba share on loopback (a share name with a space, a sub-folder,
a credentials file), retention there, restores from it, and every way it goes wrong."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from appliance.backup.archive import make_name
from appliance.backup.state import read_state, record_success
from appliance.backup.targets import SMBTarget
from appliance.cli import main
from tests.support.backup_appliance import make_appliance, run_cli

FOLDER = "Postwall/mx 1"


@pytest.fixture
def appliance(tmp_path, proxy_factory, samba):  # type: ignore[no-untyped-def]
    samba.clear()
    samba.make_folder(FOLDER)
    gen = make_appliance(tmp_path, proxy_factory)
    app = next(gen)
    credentials = tmp_path / "smbcreds"
    credentials.write_text(samba.credentials_text())
    credentials.chmod(0o600)
    app.credentials = credentials
    app.set_backup(directory="", smb={
        "server": samba.host, "port": samba.port, "share": samba.share, "folder": FOLDER,
        "credentials_file": str(credentials),
    })
    app.share_folder = samba.share_dir / FOLDER
    yield app
    with pytest.raises(StopIteration):
        next(gen)


def on_share(app) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in app.share_folder.iterdir())


def test_backup_to_the_share_is_read_back_listed_and_restored(appliance):
    result = appliance.backup()
    assert result.returncode == 0, result.stderr
    [name] = on_share(appliance)
    assert "SMB share \\\\127.0.0.1\\Appliance Backups\\Postwall\\mx 1" in result.stderr
    assert "reading it back" in result.stderr
    assert read_state(appliance.data_dir).last_verified_name == name
    # The history the web UI shows: what the share held after retention, with sizes
    # from the directory listing.
    [run] = read_state(appliance.data_dir).history
    [target] = run.targets
    assert target.label.startswith("SMB share ") and target.error is None
    share_size = (appliance.share_folder / name).stat().st_size
    assert [(b.name, b.size) for b in target.backups] == [(name, share_size)]
    assert run.size == share_size

    listing = run_cli("restore", "--config", str(appliance.config_path), "--list")
    assert listing.returncode == 0 and name in listing.stdout
    latest = appliance.restore("--latest", "--dry-run")
    assert latest.returncode == 0, latest.stderr
    assert f"downloading {name}" in latest.stderr and "nothing changed" in latest.stdout
    by_name = appliance.restore(name, "--dry-run")
    assert by_name.returncode == 0, by_name.stderr
    missing = appliance.restore("postwall-other-20200101T000000Z.tar.gz", "--dry-run")
    assert missing.returncode == 1 and "no backup named" in missing.stderr


def test_retention_on_the_share_keeps_the_newest_per_period_and_nothing_else(appliance, samba):
    now = datetime.now(UTC)
    assert appliance.backup().returncode == 0
    [real] = on_share(appliance)
    host = real.split("-")[1]
    for days in range(1, 10):  # nine older nightly backups
        old = make_name(host, now - timedelta(days=days), encrypted=False).name
        shutil.copy(appliance.share_folder / real, appliance.share_folder / old)
        samba.give(appliance.share_folder / old)
    foreign = ["notes.txt", make_name("otherhost", now - timedelta(days=30), encrypted=False).name]
    for name in foreign:
        (appliance.share_folder / name).write_text("not ours to delete\n")
    appliance.set_backup(retention={"daily": 3, "weekly": 0, "monthly": 0})
    result = appliance.backup()
    assert result.returncode == 0, result.stderr
    mine = [n for n in on_share(appliance) if n.startswith(f"postwall-{host}-")]
    assert len(mine) == 3  # today's two share a day: the newest of the last 3 days remain
    assert all(name in on_share(appliance) for name in foreign)
    assert result.stderr.count("retention: removed") == 8


def bad_settings(appliance, samba, case: str) -> str:  # type: ignore[no-untyped-def]
    """Break one thing; return the start of the expected error."""
    if case == "wrong_password":
        appliance.credentials.write_text(samba.credentials_text(password="not-the-password"))
        return "logon as 'pwbackup' refused: wrong user name or password"
    if case == "missing_share":
        appliance.set_backup(smb={"share": "No Such Share"})
        return "the share 'No Such Share' does not exist"
    if case == "missing_folder":
        appliance.set_backup(smb={"folder": "Postwall/typo"})
        return "the folder 'Postwall/typo' does not exist"
    if case == "world_readable":
        appliance.credentials.chmod(0o644)
        return "is mode 0644: it holds a secret"
    if case == "no_credentials":
        appliance.credentials.unlink()
        return "credentials file"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["wrong_password", "missing_share", "missing_folder", "world_readable",
             "no_credentials"],
)
def test_a_bad_share_setting_fails_clearly_and_counts_nothing(appliance, samba, case):
    earlier = datetime.now(UTC) - timedelta(hours=5)
    record_success(appliance.data_dir, "postwall-mx-20240101T000000Z.tar.gz", ["x"], earlier)
    before = read_state(appliance.data_dir)
    files_before = on_share(appliance)
    expected = bad_settings(appliance, samba, case)
    result = appliance.backup()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("backup FAILED: ")
    assert expected in result.stderr, result.stderr
    assert on_share(appliance) == files_before
    after = read_state(appliance.data_dir)
    assert after.last_verified == before.last_verified
    assert after.last_result == "failed" and expected in (after.last_error or "")


def test_a_hash_mismatch_after_upload_does_not_count(appliance, samba, monkeypatch):
    """The server stores something else than was sent (a failing disk, a meddling
    filter): the read-back catches it, the copy is removed, the run fails."""
    import smbclient

    assert appliance.backup().returncode == 0
    before = read_state(appliance.data_dir)
    files_before = on_share(appliance)
    original_write = SMBTarget.write

    def write_then_damage(self, local: Path, name: str) -> None:  # type: ignore[no-untyped-def]
        original_write(self, local, name)
        stored = appliance.share_folder / name
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(bytes(data))

    monkeypatch.setattr(SMBTarget, "write", write_then_damage)
    smbclient.reset_connection_cache()
    result = CliRunner().invoke(main, ["backup", "--config", str(appliance.config_path)])
    smbclient.reset_connection_cache()
    assert result.exit_code == 1
    assert "reads back with SHA-256" in result.output and "does not count" in result.output
    assert on_share(appliance) == files_before  # no partial file, no new backup name
    assert read_state(appliance.data_dir).last_verified == before.last_verified


def test_share_settings_are_validated(tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(yaml.safe_dump({"backup": {"smb": {
        "server": "files", "share": "a/b", "credentials_file": "/root/.smbcreds"}}}))
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2 and "backup.smb.share" in result.stderr
