"""`postwall webui init-admin`, `postwall webui serve` refusals, `postwall status`, and the
web UI's stores (releases, audit log) on their own."""

from __future__ import annotations

import io
import stat
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from click.testing import CliRunner

from appliance.cli import main
from appliance.storage import Storage
from appliance.storage.engine import MIGRATIONS_DIR
from tests.webui.conftest import write_config
from webui.passwords import verify_password


def config_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "postwall.yml"
    write_config(path, tmp_path / "data", dict(extra))
    return path


def test_init_admin_writes_a_private_one_time_password_once(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config)])
    assert result.exit_code == 0, result.output
    secret = tmp_path / "data" / "webui" / "initial-admin-password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    password = secret.read_text().strip()
    assert len(password) >= 20
    with Storage.open(tmp_path / "data") as storage:
        admin = storage.users.get("admin")
        assert admin.role == "admin" and admin.must_change_password
        assert verify_password(admin.password_hash, password)
        first_hash = admin.password_hash
    # Again: nothing changes (safe to run from a playbook every time).
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config)])
    assert result.exit_code == 0 and "nothing changed" in result.output
    assert secret.read_text().strip() == password
    # --reset: a new one-time password.
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config), "--reset"])
    assert result.exit_code == 0
    with Storage.open(tmp_path / "data") as storage:
        assert storage.users.get("admin").password_hash != first_hash
        assert verify_password(storage.users.get("admin").password_hash,
                               secret.read_text().strip())
        assert [e.action for e in storage.audit.search()] == ["users.reset_password",
                                                               "users.add"]


def test_init_admin_takes_a_password_from_a_vault(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config),
                                  "--username", "root-admin", "--password-from", "-"],
                           input="short\n")
    assert result.exit_code != 0 and "at least 12 characters" in result.output
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config),
                                  "--username", "root-admin", "--password-from", "-"],
                           input="a vaulted passphrase\n")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data" / "webui" / "initial-admin-password").exists()
    with Storage.open(tmp_path / "data") as storage:
        user = storage.users.get("root-admin")
        assert verify_password(user.password_hash, "a vaulted passphrase")
        assert user.must_change_password
    result = runner.invoke(main, ["webui", "init-admin", "--config", str(config),
                                  "--username", "Bad Name"])
    assert result.exit_code == 2 and "a user name is" in result.output


def test_serve_refuses_without_a_certificate(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["webui", "serve", "--config", str(config_file(tmp_path))])
    assert result.exit_code == 1
    assert "webui.cert_file and webui.key_file must be set" in result.output
    config = config_file(tmp_path, webui={"cert_file": str(tmp_path / "none.pem"),
                                          "key_file": str(tmp_path / "none.key")})
    result = runner.invoke(main, ["webui", "serve", "--config", str(config)])
    assert result.exit_code == 1 and "none.pem: no such file" in result.output
    half = config_file(tmp_path, webui={"cert_file": str(tmp_path / "x.pem")})
    result = runner.invoke(main, ["webui", "serve", "--config", str(half)])
    assert result.exit_code == 2 and "must be set together" in result.output


def test_status_command_reports_every_check(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["status", "--config", str(config_file(tmp_path))])
    assert result.exit_code == 1  # no proxy and no Postfix in this test
    lines = result.output.splitlines()
    assert lines[0].startswith("fail") and "not running" in lines[0]
    assert "127.0.0.1:9" in lines[1]
    labels = [line[9:33].strip() for line in lines]
    assert labels == ["Postwall proxy", "Postfix (downstream)", "ClamAV (clamd)",
                      "DNS resolver", "Disk (data directory)", "Last verified backup", "List files",
                      "Postfix configuration", "ClamAV signatures", "Certificates",
                      "Public host name (PTR)", "Own address on DNSBLs", "Versions"]


def test_release_claims_are_exclusive_and_can_be_given_back(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as storage:
        releases = storage.releases
        assert releases.claim("tx1", "spam", "alice")
        assert not releases.claim("tx1", "spam", "bob")
        assert releases.get("tx1").state == "sending"
        releases.abandon("tx1")
        assert releases.get("tx1") is None
        assert releases.claim("tx1", "spam", "bob")
        releases.complete("tx1", "250 2.0.0 Ok")
        releases.abandon("tx1")  # a completed release is never given back
        release = releases.get("tx1")
        assert (release.state, release.released_by, release.reply) == (
            "delivered", "bob", "250 2.0.0 Ok")
        assert set(releases.for_ids(["tx1", "tx2"])) == {"tx1"}


def test_audit_log_search(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as storage:
        audit = storage.audit
        audit.record("alice", "lists.add", "whitelist: a@b.example", None, "no expiry",
                     client_ip="192.0.2.1")
        audit.record("bob", "config.set", "scoring.thresholds.tag", "5", "4")
        audit.record("bob", "lists.remove", "blacklist: x@y.example", "no expiry", None)
        assert [e.action for e in audit.search()] == ["lists.remove", "config.set",
                                                      "lists.add"]
        assert audit.count(action="lists.") == 2
        assert [e.username for e in audit.search(username="alice")] == ["alice"]
        assert [e.target for e in audit.search(text="THRESHOLDS")] == ["scoring.thresholds.tag"]
        assert audit.search(limit=1, offset=1)[0].action == "config.set"
        audit.record("eve", "x", "t", "v" * 10000, None)
        assert len(audit.search(username="eve")[0].old_value) == 4000


def test_web_ui_tables_render_for_postgresql() -> None:
    buffer = io.StringIO()
    config = AlembicConfig(output_buffer=buffer)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", "postgresql://")
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    for table in ("webui_users", "login_failures", "audit_log", "quarantine_releases"):
        assert f"CREATE TABLE {table}" in sql
    assert "BOOLEAN NOT NULL" in sql and "SERIAL" in sql


def test_the_postwall_command_loads_no_web_ui_or_database_code() -> None:
    # `postwall serve`'s supervisor stays small: registering the webui commands must not
    # import Flask, the schema or the database layer.
    import subprocess
    import sys

    code = ("import sys, appliance.cli; print(sorted(m for m in ('flask', 'flask_wtf', "
            "'sqlalchemy', 'pydantic', 'argon2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
