"""What a backup contains, staged into a directory tree that mirrors the archive paths.

Databases are copied with the online backup API (snapshot.py). Kept mail and corpus
files are written once (temporary file, rename) and never changed, so a hard link into
the staging tree (on the same file system, under data_dir/run) is already a stable copy
and costs no space; elsewhere they are copied.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from appliance import __version__
from appliance.backup.errors import BackupError
from appliance.backup.manifest import DatabaseEntry, Manifest, describe_file
from appliance.backup.snapshot import find_databases, snapshot_database
from appliance.config.loader import OVERRIDES_NAME, LoadedConfig

Progress = Callable[[str], None]

WEBUI_SECRET = Path("webui") / "secret_key"
CORPUS_DIR = "corpus"
MAIL_DIR = "mail"
MAIN_DB = "postwall.db"
PACKAGES_FILE = "info/packages.txt"
VERSION_FILE = "info/version.txt"
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def stage(
    loaded: LoadedConfig, staging: Path, *, progress: Progress, host: str | None = None,
    now: datetime | None = None,
) -> Manifest:
    config = loaded.config
    settings = config.backup
    data_dir = Path(config.data_dir)
    manifest = Manifest(
        host=host or socket.gethostname(),
        created=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        appliance_version=__version__,
        schema_version=None,
    )

    def add(relative: str, component: str) -> None:
        manifest.files.append(describe_file(staging, relative, component))

    # Configuration: the base file and the web UI's overrides.
    if loaded.base_path is not None:
        _copy(loaded.base_path, staging / "config" / loaded.base_path.name)
        add(f"config/{loaded.base_path.name}", "config")
    overrides = data_dir / OVERRIDES_NAME
    if overrides.is_file():
        _copy(overrides, staging / "data" / OVERRIDES_NAME)
        add(f"data/{OVERRIDES_NAME}", "config")

    # State: every database, as a snapshot.
    for database in find_databases(data_dir):
        progress(f"snapshot of {database.name}")
        relative = f"data/{database.name}"
        snap = snapshot_database(database, staging / relative)
        add(relative, "state")
        manifest.databases.append(DatabaseEntry(relative, snap.schema_version, snap.tables))
        if database.name == MAIN_DB:
            manifest.schema_version = snap.schema_version
    if (data_dir / WEBUI_SECRET).is_file():
        _copy(data_dir / WEBUI_SECRET, staging / "data" / WEBUI_SECRET)
        add(f"data/{WEBUI_SECRET.as_posix()}", "state")

    # The classifier's corpus (statistics) and, if asked, the kept mail.
    trees = [(CORPUS_DIR, "statistics")]
    if settings.include_mail:
        trees.append((MAIL_DIR, "mail"))
    for tree, component in trees:
        count = 0
        for source in _tree_files(data_dir / tree):
            relative = f"data/{source.relative_to(data_dir).as_posix()}"
            if not _link_or_copy(source, staging / relative):
                continue  # removed by mail retention since the walk
            add(relative, component)
            count += 1
        if count:
            progress(f"{count} file(s) from {tree}/")

    # System files the roles manage.
    for name in settings.system_files:
        source = Path(name)
        if not source.is_file():
            manifest.notes.append(f"skipped {name}: not present")
            continue
        relative = "system" + source.as_posix()
        _copy(source, staging / relative)
        add(relative, "system")

    # Facts for a rebuild by hand: the packages and our version.
    (staging / "info").mkdir(parents=True, exist_ok=True)
    (staging / VERSION_FILE).write_text(f"postwall {__version__}\n")
    add(VERSION_FILE, "system")
    packages = installed_packages()
    if packages is None:
        manifest.notes.append("no Debian package list: dpkg-query is not available")
    else:
        (staging / PACKAGES_FILE).write_text(packages)
        add(PACKAGES_FILE, "system")
    return manifest


def installed_packages() -> str | None:
    binary = shutil.which("dpkg-query", path=SAFE_PATH)
    if binary is None:
        return None
    result = subprocess.run(  # noqa: S603 - fixed argv
        [binary, "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"],
        capture_output=True, text=True, env={"PATH": SAFE_PATH, "LC_ALL": "C"}, check=False,
        timeout=60,
    )
    if result.returncode != 0:
        return None
    lines = sorted(
        "\t".join(line.split("\t")[1:]) for line in result.stdout.splitlines()
        if line.startswith("ii")
    )
    return "".join(f"{line}\n" for line in lines)


def _tree_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):  # temporary files of a write in progress
                continue
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(source, target)
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _link_or_copy(source: Path, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            shutil.copy2(source, target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackupError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return True
