"""`postwall upgrade` end to end: real release venvs in a temporary --home, the proxy run
by the plain-process service manager against the test Postfix, mail sent all along.

One wheel of this work tree is built with pip; the other releases are derived from it
(tests/support/releases.py): 0.1.0 (installed first), 0.1.1 (a good upgrade), 0.1.2,
DELIBERATELY BROKEN: it adds a migration (its databases move to a revision 0.1.1 does not
know) and then fails every message at DATA (451), so the health gate's probe fails and
the upgrade must roll back, databases included; 0.1.3 renamed a setting the live
configuration uses, so its check-config refuses it. Every release is a real venv with a
real `pip install` of its wheel, from a wheelhouse of the dependencies built once
(ops.pip_args: --no-index --find-links)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from appliance.backup.verify import verify_backup
from appliance.config import loader
from appliance.ops.flag import flag_path
from appliance.ops.releases import Releases
from appliance.ops.services import PROXY, ProcessServices
from appliance.storage.engine import head_version
from tests.support.releases import (
    PortWatch,
    SenderLoop,
    build_wheel,
    build_wheelhouse,
    derive_wheel,
)
from tests.support.services import free_port, wait_for_smtp, wait_until

MIGRATION = "appliance/storage/migrations/versions/9901_upgrade_test.py"
BROKEN = {"appliance/smtp/handler.py": (
    "        await runtime.pipeline.run(Stage.DATA, tx)\n",
    "        raise RuntimeError('a deliberately broken release')\n",
)}
REFUSES_CONFIG = {"appliance/config/schema.py": (
    "    drain_timeout: float = Field(", "    drain_seconds: float = Field(",
)}


def migration(down_revision: str) -> str:
    return f"""\"\"\"A migration of the deliberately broken test release.

Revision ID: 9901
Revises: {down_revision}
\"\"\"

import sqlalchemy as sa
from alembic import op

revision = "9901"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("upgrade_test_feature", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("upgrade_test_feature")
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    dest = tmp_path_factory.mktemp("wheels")
    with ThreadPoolExecutor(2) as pool:
        house = pool.submit(build_wheelhouse, tmp_path_factory.mktemp("wheelhouse"))
        base = build_wheel(dest)
        wheelhouse = house.result()
    return wheelhouse, {
        "0.1.0": base,
        "0.1.1": derive_wheel(base, dest, "0.1.1"),
        "0.1.2": derive_wheel(base, dest, "0.1.2", BROKEN,
                              {MIGRATION: migration(head_version())}),
        "0.1.3": derive_wheel(base, dest, "0.1.3", REFUSES_CONFIG),
    }


def settings_for(base: Path, postfix_port: int, wheelhouse: Path) -> dict:
    return {
        "listen": {"inbound": f"127.0.0.1:{free_port()}", "relay": f"127.0.0.1:{free_port()}"},
        "relay_networks": ["127.0.0.0/8"],
        "downstream": {"host": "127.0.0.1", "port": postfix_port, "timeout": 10},
        "local_domains": ["example.com"],
        "data_dir": str(base / "data"),
        "metrics": {"listen": None},
        "smtp": {"hostname": "postwall.test"},
        "backup": {"directory": str(base / "backups"), "system_files": []},
        "ops": {"service_manager": "process", "serve_workers": 1, "health_timeout": 12,
                "drain_timeout": 10, "compile_bytecode": False,
                "pip_args": ["--no-index", "--find-links", str(wheelhouse)]},
    }


@pytest.fixture(scope="module")
def appliance(wheels, tmp_path_factory, postfix):
    """0.1.0 installed and serving, as the postwall role leaves a host."""
    wheelhouse, built = wheels
    base = tmp_path_factory.mktemp("appliance")
    home = base / "opt-postwall"
    config_path = base / "postwall.yml"
    settings = settings_for(base, postfix.port, wheelhouse)
    config_path.write_text(yaml.safe_dump(settings))
    config = loader.load(config_path).config
    releases = Releases(home)
    releases.install(str(built["0.1.0"]), "0.1.0", pip_args=config.ops.pip_args,
                     compile_bytecode=False)
    releases.switch("0.1.0")
    services = ProcessServices(config, config_path, home)
    services.start(PROXY)
    host, port = config.listen.inbound.rsplit(":", 1)
    wait_for_smtp(host, int(port), timeout=30, any_greeting=True)
    yield home, config_path, services, (host, int(port))
    services.stop(PROXY, timeout=15)


def serving_release(services: ProcessServices) -> str:
    pid = services.pid(PROXY)
    assert pid is not None, "the proxy is not running"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    interpreter = argv[0].decode()  # releases/VERSION/bin/python, from the script's #!
    return Path(interpreter).parent.parent.name


def run_upgrade(home: Path, config_path: Path, *args: str, backup: bool = False
                ) -> subprocess.CompletedProcess[str]:
    program = home / "current" / "bin" / "postwall"  # the installed release runs it
    return subprocess.run(
        [str(program), "upgrade", "--config", str(config_path), "--home", str(home),
         *([] if backup else ["--no-backup"]), *args],
        capture_output=True, text=True, timeout=300,
    )


def upgrade_under_load(appliance, recorded, prefix: str, *args: str, backup: bool = False):
    home, config_path, _services, (host, port) = appliance
    with SenderLoop(host, port, prefix) as sender, PortWatch(host, port) as watch:
        assert wait_until(lambda: len(sender.accepted) >= 2, 20)
        started = time.monotonic()
        result = run_upgrade(home, config_path, *args, backup=backup)
        seconds = time.monotonic() - started
        count = len(sender.accepted)
        assert wait_until(lambda: len(sender.accepted) >= count + 2, 60), result.stderr
    assert not sender.permanent_failures, sender.permanent_failures
    messages = recorded.wait_for(len(sender.accepted), timeout=30)
    subjects = sorted(m.message["Subject"] for m in messages)
    assert subjects == sorted(sender.accepted), "mail lost or duplicated during the upgrade"
    print(f"\n{' '.join(args)}: exit {result.returncode} in {seconds:.1f}s; port refused "
          f"{watch.refused_seconds:.3f}s (longest {watch.longest_gap:.3f}s, {watch.probes} "
          f"probes); {len(sender.accepted)} messages, {sender.temporary_failures} retries\n"
          f"{result.stderr.strip()}\n{result.stdout.strip()}")
    return result, watch


def database_revision(config_path: Path) -> tuple[str, list[str]]:
    """The alembic revision of postwall.db and its test-migration tables."""
    database = Path(loader.load(config_path).config.data_dir) / "postwall.db"
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'upgrade_test%'")]
    finally:
        conn.close()
    return revision, tables


def send_one(address: tuple[str, int], recorded, ident: str) -> None:
    with SenderLoop(*address, ident) as sender:
        assert wait_until(lambda: len(sender.accepted) >= 1, 20)
    messages = recorded.wait_for(len(sender.accepted), timeout=20)
    assert f"{ident}-1" in [m.message["Subject"] for m in messages]


def test_a_failing_backup_stops_the_upgrade_before_anything_changes(appliance, wheels,
                                                                    tmp_path, recorded):
    home, config_path, services, address = appliance
    _wheelhouse, built = wheels
    pid = services.pid(PROXY)
    # The same appliance, its backup directory under a plain file: no backup can be made.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = yaml.safe_load(config_path.read_text())
    settings["backup"]["directory"] = str(blocker / "backups")
    broken_backup = tmp_path / "postwall.yml"
    broken_backup.write_text(yaml.safe_dump(settings))

    result = run_upgrade(home, broken_backup, "--wheel", str(built["0.1.1"]), backup=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("upgrade failed: backup failed, nothing changed: "), result.stderr
    assert "not-a-directory" in last
    releases = Releases(home)
    assert releases.current() == "0.1.0" and releases.previous() is None
    assert releases.installed() == ["0.1.0"]
    assert not releases.wheels.exists()
    assert services.pid(PROXY) == pid, "the proxy was restarted"
    send_one(address, recorded, "after-failed-backup")


def test_a_release_refusing_the_live_configuration_is_never_switched_to(appliance, wheels,
                                                                        recorded):
    home, config_path, services, address = appliance
    _wheelhouse, built = wheels
    pid = services.pid(PROXY)
    result = run_upgrade(home, config_path, "--wheel", str(built["0.1.3"]))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"upgrade failed: 0.1.3 refuses the live configuration "
                           f"{config_path}: "), result.stderr
    assert "drain_timeout" in last
    assert "maintenance" not in result.stderr  # refused before any window
    releases = Releases(home)
    assert releases.current() == "0.1.0" and releases.previous() is None
    assert services.pid(PROXY) == pid and serving_release(services) == "0.1.0"
    assert not flag_path(loader.load(config_path).config.data_dir).exists()
    send_one(address, recorded, "after-refused-config")


@pytest.mark.timeout(900)
def test_upgrade_with_backup_rollback_of_a_migrating_broken_release_and_manual_rollback(
    appliance, wheels, recorded
):
    home, config_path, services, _address = appliance
    _wheelhouse, built = wheels
    releases = Releases(home)
    backups = Path(loader.load(config_path).config.backup.directory)
    old_revision = head_version()
    assert serving_release(services) == "0.1.0"
    assert database_revision(config_path) == (old_revision, [])

    # A good upgrade, with the backup first (not --no-backup), under mail load.
    result, watch = upgrade_under_load(appliance, recorded, "good", "--wheel",
                                       str(built["0.1.1"]), backup=True)
    assert result.returncode == 0, result.stderr
    assert "upgraded 0.1.0 -> 0.1.1" in result.stdout
    assert releases.current() == "0.1.1" and releases.previous() == "0.1.0"
    assert serving_release(services) == "0.1.1"
    assert watch.refused_seconds < 1.0
    [archive] = sorted(backups.glob("postwall-*.tar.gz"))
    report = verify_backup(archive, backups.parent / "verify-scratch", None)
    assert report.manifest.appliance_version == "0.1.0"  # taken by the release upgraded from
    assert report.manifest.schema_version == old_revision and report.rows > 0

    # A broken release that migrates the database and then fails the health gate.
    recorded.clear()
    result, watch = upgrade_under_load(appliance, recorded, "broken", "--wheel",
                                       str(built["0.1.2"]))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("upgrade failed: upgrade to 0.1.2 failed and was rolled back; "
                           "0.1.1 serves again: probe message"), result.stderr
    assert "databases put back to the schema of before the upgrade: postwall.db" in result.stderr
    assert releases.current() == "0.1.1" and releases.previous() == "0.1.0"
    assert serving_release(services) == "0.1.1"
    # The old release faces the schema it knows; what 0.1.2 added is gone.
    assert database_revision(config_path) == (old_revision, [])

    recorded.clear()
    result, _watch = upgrade_under_load(appliance, recorded, "back", "--rollback")
    assert result.returncode == 0, result.stderr
    assert "rolled back 0.1.1 -> 0.1.0" in result.stdout
    assert releases.current() == "0.1.0" and releases.previous() == "0.1.1"
    assert serving_release(services) == "0.1.0"
    # The health probes were judged, never delivered.
    assert not [m for m in recorded.messages() if b"Postwall health check" in m.content]
    assert not flag_path(loader.load(config_path).config.data_dir).exists()


def test_a_second_upgrade_is_refused_while_one_runs(appliance, wheels):
    home, config_path, _services, _address = appliance
    _wheelhouse, built = wheels
    import fcntl

    lock = Path(loader.load(config_path).config.data_dir) / "run" / "upgrade.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"pid 1: upgrade\n", 0)
        result = run_upgrade(home, config_path, "--wheel", str(built["0.1.1"]))
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "upgrade.lock is held (pid 1: upgrade); upgrade not started" in result.stderr
