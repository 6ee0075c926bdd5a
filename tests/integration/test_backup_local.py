"""`postwall backup` to a local directory, `backup list`, `backup keygen`, and every way
`postwall restore` refuses a backup before touching anything; the real command, run as a
process, against real data directories (no service is started here)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import yaml

from appliance.backup.lock import exclusive_run
from appliance.backup.state import read_state
from appliance.config import loader
from appliance.status import State, check_backup
from appliance.storage.facade import Storage
from tests.support.backup_appliance import (
    WHITELIST,
    make_appliance,
    manifest_of,
    run_cli,
    tree_digest,
)


@pytest.fixture
def appliance(tmp_path, proxy_factory):  # type: ignore[no-untyped-def]
    yield from make_appliance(tmp_path, proxy_factory)


def test_backup_to_a_local_directory_is_verified_listed_and_reported(appliance):
    result = appliance.backup()
    assert result.returncode == 0, result.stderr
    [archive] = appliance.files()
    assert archive.name.startswith("postwall-") and archive.name.endswith("Z.tar.gz")
    assert archive.stat().st_mode & 0o777 == 0o600
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"backup {archive.name}: ") and "verified" in summary
    assert "snapshot of postwall.db" in result.stderr and "verifying" in result.stderr

    manifest = manifest_of(archive)
    components = {f["path"]: f["component"] for f in manifest["files"]}
    assert components["config/postwall.yml"] == "config"
    assert components["data/config-overrides.yml"] == "config"
    assert components["data/postwall.db"] == "state"
    assert components["data/mail/spam/kept0001.eml"] == "mail"
    assert components["data/corpus/0123456789abcdef0123.eml"] == "statistics"
    assert components["info/version.txt"] == "system"
    assert any(p.startswith("system/") for p in components)
    [database] = manifest["databases"]
    assert database["tables"]["list_entries"] == len(WHITELIST) + 1
    assert database["tables"]["message_log"] == 40
    assert manifest["schema_version"] == database["schema_version"] is not None

    state = read_state(appliance.data_dir)
    assert state.last_verified_name == archive.name and state.last_result == "ok"
    loaded = loader.load(appliance.config_path)
    assert check_backup(loaded.config).state is State.OK

    listing = run_cli("backup", "list", "--config", str(appliance.config_path))
    assert listing.returncode == 0 and archive.name in listing.stdout


def test_restore_dry_run_shows_changes_per_component_and_changes_nothing(appliance):
    assert appliance.backup().returncode == 0
    [archive] = appliance.files()
    with Storage.open(appliance.data_dir) as storage:
        storage.lists.remove("whitelist", WHITELIST[0])
    (appliance.data_dir / "mail" / "spam" / "kept0001.eml").unlink()
    before = tree_digest(appliance.data_dir)
    result = appliance.restore(str(archive), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "mail: 1 added, 0 changed, 0 removed" in result.stdout
    assert f"table    list_entries: {len(WHITELIST)} -> {len(WHITELIST) + 1} rows" in result.stdout
    assert "nothing changed" in result.stdout
    assert tree_digest(appliance.data_dir) == before


DAMAGES = {  # what is done to a good backup -> what the refusal says
    "corrupted": "corrupted",
    "truncated": "truncated",
    "hash_mismatch": "does not match its SHA-256",
    "not_a_backup": "corrupted",
}


def damaged_copy(archive: Path, target: Path, damage: str) -> Path:
    data = archive.read_bytes()
    bad = target / damage / archive.name
    bad.parent.mkdir(parents=True)
    if damage == "corrupted":
        bad.write_bytes(data[:2000] + bytes([data[2000] ^ 0xFF]) + data[2001:])
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "not_a_backup":
        bad.write_bytes(b"just some text\n" * 100)
    else:  # a well-formed tarball whose file does not match the manifest
        work = target / "tamper"
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        overrides = work / "data" / "config-overrides.yml"
        overrides.write_text(overrides.read_text().upper())  # same size, other content
        names = ["manifest.json"] + [f["path"] for f in manifest_of(archive)["files"]]
        with tarfile.open(bad, "w:gz") as tar:
            for name in names:
                tar.add(work / name, name)
    return bad


def test_a_damaged_backup_is_refused_before_anything_changes(appliance, tmp_path):
    assert appliance.backup().returncode == 0
    [archive] = appliance.files()
    before = tree_digest(appliance.data_dir)
    config_before = appliance.config_path.read_bytes()
    for damage, expected in DAMAGES.items():
        result = appliance.restore(str(damaged_copy(archive, tmp_path, damage)))
        assert result.returncode == 1, damage
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("restore FAILED: "), (damage, result.stderr)
        assert expected in message, (damage, message)
        assert tree_digest(appliance.data_dir) == before, damage
        assert appliance.config_path.read_bytes() == config_before, damage


def test_encrypted_backups_restore_only_with_their_key(appliance, tmp_path):
    key, other = tmp_path / "backup.key", tmp_path / "other.key"
    for path in (key, other):
        made = run_cli("backup", "keygen", str(path))
        assert made.returncode == 0 and "key id" in made.stdout
    again = run_cli("backup", "keygen", str(key))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    config = yaml.safe_load(appliance.config_path.read_text())
    config["backup"]["encryption_key_file"] = str(key)
    appliance.config_path.write_text(yaml.safe_dump(config))
    assert appliance.backup().returncode == 0
    [archive] = appliance.files()
    assert archive.name.endswith(".tar.gz.enc")
    assert b"friend0@partner.example" not in archive.read_bytes()
    with pytest.raises(tarfile.ReadError), tarfile.open(archive):
        pass

    wrong = appliance.restore(str(archive), "--dry-run", "--key-file", str(other))
    assert wrong.returncode == 1 and "encrypted with another key" in wrong.stderr
    right = appliance.restore(str(archive), "--dry-run")
    assert right.returncode == 0, right.stderr
    other.chmod(0o644)
    loose = appliance.restore(str(archive), "--dry-run", "--key-file", str(other))
    assert loose.returncode == 1 and "chmod 600" in loose.stderr


def test_a_second_run_is_refused_while_one_holds_the_lock(appliance):
    before = read_state(appliance.data_dir)
    with exclusive_run(appliance.data_dir, "backup"):
        result = appliance.backup()
        restored = appliance.restore("--latest")
    assert result.returncode == 1 and "another backup or restore is running" in result.stderr
    assert restored.returncode == 1 and "another backup or restore is running" in restored.stderr
    assert appliance.files() == []
    assert read_state(appliance.data_dir).last_verified == before.last_verified
