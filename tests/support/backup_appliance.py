"""An appliance for the backup tests: a configuration (listeners on free ports, downstream
= the test Postfix, backups to a local directory, services as plain processes) and a
populated data_dir, plus the `postwall` command run as a real process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from appliance.config import loader
from appliance.ops.services import PROXY, ProcessServices
from appliance.storage.facade import Storage
from appliance.storage.messagelog import MessageLogEntry
from tests.support.services import REPO_ROOT

WHITELIST = [f"friend{i}@partner.example" for i in range(25)]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO_ROOT, check=False,
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its SHA-256, except runtime files (run/, and the WAL
    index files SQLite creates when any reader opens the database)."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        runtime = relative.startswith("run/") or relative.endswith(("-wal", "-shm"))
        if path.is_file() and not runtime:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def log_entry(index: int) -> MessageLogEntry:
    return MessageLogEntry(
        id=f"tx{index:05d}", time=datetime.now(UTC), listener="inbound",
        client_ip="192.0.2.7", helo="mx.partner.example", sender="a@partner.example",
        recipients=["bob@example.com"], subject=f"report {index}", size=1000 + index,
        symbols=[("BAYES_HAM", -1.0, "p=0.01")], total=-1.0, action="deliver",
        reply="250 2.0.0 Ok",
    )


def populate(data_dir: Path, *, messages: int = 40) -> None:
    with Storage.open(data_dir) as storage:
        storage.lists.add_many("whitelist", WHITELIST, source="ui")
        storage.lists.add("blacklist", "@spammer.example", source="ui")
        storage.messagelog.record_many([log_entry(i) for i in range(messages)])
        storage.mail.keep("spam", "kept0001", b"Subject: spam\r\n\r\nbuy\r\n")
        storage.corpus.root.joinpath("0123456789abcdef0123.eml").write_bytes(b"Subject: c\r\n\r\n")
    loader.write_overrides(data_dir / loader.OVERRIDES_NAME, {"test_mode": True})


def make_appliance(tmp_path: Path, proxy_factory):  # type: ignore[no-untyped-def]
    """An appliance's config (listeners on free ports, downstream = the test Postfix,
    backups to tmp/backups, services as plain processes) and a populated data_dir; the
    proxy is not running. `home/current/bin/postwall` is this checkout's command."""
    proxy = proxy_factory(
        start=False,
        backup={"directory": str(tmp_path / "backups"), "include_mail": True,
                "system_files": [str(tmp_path / "etc-postfix-main.cf")]},
        ops={"service_manager": "process", "serve_workers": 1, "health_timeout": 30,
             "drain_timeout": 5},
    )
    (tmp_path / "etc-postfix-main.cf").write_text("myhostname = mx.example.com\n")
    home = tmp_path / "home"
    (home / "current" / "bin").mkdir(parents=True)
    (home / "current" / "bin" / "postwall").symlink_to(Path(sys.executable).with_name("postwall"))
    populate(proxy.data_dir)
    app = Appliance(proxy.config_path, proxy.data_dir, home, tmp_path / "backups", proxy.config)
    yield app
    app.stop_services()


class Appliance:
    def __init__(self, config_path: Path, data_dir: Path, home: Path, backups: Path,
                 config: dict[str, Any]) -> None:
        self.config_path, self.data_dir, self.home, self.backups = (
            config_path, data_dir, home, backups)
        self.config = config

    def set_backup(self, **changes: Any) -> None:
        """Change backup settings in the configuration file ('' removes a setting)."""
        document = yaml.safe_load(self.config_path.read_text())
        section = document.setdefault("backup", {})
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(section.get(key), dict):
                section[key].update(value)
            elif value == "":
                section.pop(key, None)
            else:
                section[key] = value
        self.config_path.write_text(yaml.safe_dump(document))
        self.config = document

    def backup(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("backup", "--config", str(self.config_path), *extra)

    def restore(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("restore", "--config", str(self.config_path), "--home", str(self.home),
                       *extra)

    def files(self) -> list[Path]:
        return sorted(self.backups.glob("postwall-*"))

    def stop_services(self) -> None:
        loaded = loader.load(self.config_path)
        services = ProcessServices(loaded.config, self.config_path, self.home)
        if services.is_running(PROXY):
            services.stop(PROXY)

    def whitelist(self) -> list[str]:
        with Storage.open(self.data_dir) as storage:
            return sorted(e.value for e in storage.lists.entries("whitelist", limit=1000))

    def log_count(self) -> int:
        with Storage.open(self.data_dir) as storage:
            return storage.messagelog.count()


def manifest_of(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return json.loads(member.read())

