"""`postwall restore`: check a backup completely, show what would change, then apply it
inside a maintenance window (mail is deferred with 4xx, never lost) and put everything
back if the appliance does not come up healthy.

Order of events:
1. fetch the tarball (a path, or a name on a configured target) into data_dir/run;
2. decrypt, unpack and compare every hash with the manifest; load its configuration and
   open its databases (verify.py). Any problem: stop here, nothing was touched;
3. migrate the backup's database copy to this version's schema if it is older (refuse
   one from a newer version);
4. plan: added/changed/removed files and table row counts per component (`--dry-run`
   prints this and stops);
5. inside `MaintenanceWindow`: copy everything about to change into a rollback directory,
   replace files (temporary file + rename each), copy the selected tables in one SQLite
   transaction; the window restarts the services and runs the health gate;
6. on any error or a failed health gate: put the rollback copies back and restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.backup.archive import parse_name
from appliance.backup.errors import BackupError
from appliance.backup.manifest import COMPONENTS, DEFAULT_RESTORE, Manifest, table_component
from appliance.backup.snapshot import count_rows
from appliance.backup.targets import Target
from appliance.backup.verify import check_contents, open_backup
from appliance.config import loader
from appliance.config.schema import Config

Progress = Callable[[str], None]
WindowFactory = Callable[[Config], contextlib.AbstractContextManager[Any]]
MAIN_DB = "postwall.db"


# -- finding the backup --------------------------------------------------------------


def find_backup(targets: list[Target], name: str | None, host: str | None
                ) -> tuple[Target, str]:
    """A backup by name, or (name None) the newest of `host` on any target."""
    if not targets:
        raise BackupError("no backup target configured (backup.directory / backup.smb): "
                          "give the path of a backup file instead")
    if name is not None:
        if parse_name(name) is None:
            raise BackupError(f"{name!r} is not a backup name (postwall-HOST-TIME.tar.gz[.enc])")
        errors = []
        for target in targets:
            try:
                if name in target.names():
                    return target, name
            except BackupError as exc:
                errors.append(str(exc))
        raise BackupError(f"no backup named {name} on "
                          + ", ".join(t.label for t in targets)
                          + (f" ({'; '.join(errors)})" if errors else ""))
    newest: tuple[Any, Target] | None = None
    hosts: set[str] = set()
    for target in targets:
        for backup in target.backups():
            hosts.add(backup.host)
            if backup.host == host and (newest is None or backup.when > newest[0].when):
                newest = (backup, target)
    if newest is None:
        others = f" (backups of: {', '.join(sorted(hosts))}; name one)" if hosts else ""
        raise BackupError(f"no backup of host {host!r} on "
                          + ", ".join(t.label for t in targets) + others)
    return newest[1], newest[0].name


# -- planning ------------------------------------------------------------------------


@dataclass
class FileChange:
    component: str
    kind: str  # added | changed | removed
    destination: Path
    source: Path | None  # in the unpacked tree; None for removals


@dataclass
class TableChange:
    component: str
    table: str
    rows_now: int | None
    rows_backup: int


@dataclass
class RestorePlan:
    manifest: Manifest
    tree: Path
    components: list[str]
    data_dir: Path
    files: list[FileChange] = field(default_factory=list)
    tables: list[TableChange] = field(default_factory=list)
    database: Path | None = None  # the (migrated) backup copy of postwall.db
    live_database: Path | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = []
        for component in self.components:
            changes = [f for f in self.files if f.component == component]
            tables = [t for t in self.tables if t.component == component]
            counts = {k: sum(1 for f in changes if f.kind == k)
                      for k in ("added", "changed", "removed")}
            lines.append(f"{component}: {counts['added']} added, {counts['changed']} changed, "
                         f"{counts['removed']} removed"
                         + (f", {len(tables)} table(s)" if tables else ""))
            lines += [f"  {f.kind:8} {f.destination}" for f in changes[:50]]
            if len(changes) > 50:
                lines.append(f"  ... and {len(changes) - 50} more")
            for t in tables:
                now = "-" if t.rows_now is None else str(t.rows_now)
                lines.append(f"  table    {t.table}: {now} -> {t.rows_backup} rows")
        lines += [f"note: {n}" for n in self.notes]
        return lines


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(DEFAULT_RESTORE)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [c for c in chosen if c not in COMPONENTS]
    if unknown or not chosen:
        raise BackupError(f"--only: unknown component(s) {', '.join(unknown) or '(none)'}; "
                          f"choose from {', '.join(COMPONENTS)}")
    return [c for c in COMPONENTS if c in chosen]


def destination(archive_path: str, config_path: Path, data_dir: Path) -> Path | None:
    parts = PurePosixPath(archive_path).parts
    if parts[0] == "config":
        return config_path
    if parts[0] == "data":
        return data_dir.joinpath(*parts[1:])
    if parts[0] == "system":
        return Path("/").joinpath(*parts[1:])
    return None  # info/: for people, never restored


def prepare(
    archive: Path, scratch: Path, key: bytes | None, *, config_path: Path,
    live: Config | None, components: list[str], progress: Progress,
) -> RestorePlan:
    """Steps 2-4: everything that reads, nothing that writes outside `scratch`."""
    progress(f"checking {archive.name}: every hash, the configuration, the databases")
    manifest, tree = open_backup(archive, scratch, key)
    check_contents(manifest, tree, archive.name)
    base = next((f for f in manifest.files if f.path.startswith("config/")), None)
    if "config" in components and base is not None:
        restored = loader.load(tree / base.path, tree / "data" / loader.OVERRIDES_NAME)
        data_dir = Path(restored.config.data_dir)
    elif live is not None:
        data_dir = Path(live.data_dir)
    else:
        raise BackupError("no configuration here and none restored: give --config or "
                          "include the config component")
    plan = RestorePlan(manifest, tree, components, data_dir)
    available = manifest.components()
    for component in components:
        if component not in available:
            plan.notes.append(f"the backup has no {component} component")

    db_entry = manifest.database(f"data/{MAIN_DB}")
    db_components = {"lists", "statistics", "state"} & set(components)
    for entry in manifest.files:
        if entry.path == f"data/{MAIN_DB}" or entry.component not in components:
            continue
        target = destination(entry.path, config_path, data_dir)
        if target is None:
            continue
        source = tree / entry.path
        if not target.exists():
            plan.files.append(FileChange(entry.component, "added", target, source))
        elif not _same(source, target):
            plan.files.append(FileChange(entry.component, "changed", target, source))
    overrides = data_dir / loader.OVERRIDES_NAME
    if ("config" in components and base is not None and overrides.exists()
            and manifest.entry(f"data/{loader.OVERRIDES_NAME}") is None):
        plan.files.append(FileChange("config", "removed", overrides, None))

    if db_entry is not None and db_components:
        plan.database = _migrated_copy(tree / db_entry.path, db_entry.schema_version, plan,
                                       progress)
        plan.live_database = data_dir / MAIN_DB
        live_counts = _live_counts(plan.live_database)
        with contextlib.closing(sqlite3.connect(plan.database)) as conn:
            backup_counts = count_rows(conn)
        for table, rows in sorted(backup_counts.items()):
            component = table_component(table)
            if component in db_components:
                plan.tables.append(TableChange(component, table, live_counts.get(table), rows))
    return plan


def _same(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _live_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return count_rows(conn)


def _migrated_copy(path: Path, version: str | None, plan: RestorePlan,
                   progress: Progress) -> Path:
    from appliance.storage.engine import (
        create_storage_engine,
        head_version,
        sqlite_url,
        upgrade,
    )

    head = head_version()
    if version == head:
        return path
    from alembic.script import ScriptDirectory

    from appliance.storage.engine import _alembic_config

    scripts = ScriptDirectory.from_config(_alembic_config())
    known = {rev.revision for rev in scripts.walk_revisions()}
    if version is not None and version not in known:
        raise BackupError(f"the backup's database schema {version} is unknown to this version "
                          f"(head {head}): it was made by a newer postwall; upgrade first")
    progress(f"migrating the backup's database from schema {version} to {head}")
    engine = create_storage_engine(sqlite_url(path))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    plan.notes.append(f"database migrated from schema {version} to {head}")
    return path


# -- applying ------------------------------------------------------------------------


class Rollback:
    """Copies of everything a restore changes, to put back on failure."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.saved: list[tuple[Path, Path]] = []  # (original location, copy)
        self.created: list[Path] = []
        self.database: tuple[Path, Path, list[str]] | None = None  # live, copy, tables

    def save_file(self, path: Path) -> None:
        if not path.exists():
            self.created.append(path)
            return
        copy = self.directory / "files" / str(len(self.saved))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        self.saved.append((path, copy))

    def save_database(self, live: Path, tables: list[str]) -> None:
        copy = self.directory / MAIN_DB
        if live.exists():
            _sqlite_copy(live, copy)
            self.database = (live, copy, tables)
        else:
            self.created.append(live)

    def put_back(self) -> None:
        for original, copy in reversed(self.saved):
            _replace_file(copy, original)
        for path in self.created:
            path.unlink(missing_ok=True)
            if path.name == MAIN_DB:
                for suffix in ("-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        if self.database is not None:
            # Only the restored tables go back: rows written since the copy was taken
            # (the message log of mail the restored proxy judged, the gate's probe) stay,
            # and the change counters keep growing, as the processes expect.
            live, copy, tables = self.database
            copy_tables(copy, live, tables)


def _sqlite_copy(source: Path, target: Path) -> None:
    """The online backup API in both directions: WAL content included, target replaced
    page by page inside its own transaction."""
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _replace_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".restore-{target.name}")
    shutil.copyfile(source, tmp)
    try:
        if target.exists():
            info = target.stat()
            os.chmod(tmp, info.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(tmp, info.st_uid, info.st_gid)
        else:
            os.chmod(tmp, source.stat().st_mode & 0o777)
            parent = target.parent.stat()
            with contextlib.suppress(PermissionError):
                os.chown(tmp, parent.st_uid, parent.st_gid)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def apply_plan(plan: RestorePlan, rollback: Rollback, progress: Progress) -> None:
    """Step 5 (inside the window). Raises on failure; the caller calls rollback.put_back."""
    for change in plan.files:
        rollback.save_file(change.destination)
    if plan.tables and plan.live_database is not None:
        rollback.save_database(plan.live_database, [t.table for t in plan.tables])
    for change in plan.files:
        if change.kind == "removed":
            change.destination.unlink(missing_ok=True)
        else:
            assert change.source is not None
            _replace_file(change.source, change.destination)
    if plan.tables and plan.database is not None and plan.live_database is not None:
        progress(f"restoring {len(plan.tables)} table(s) into {plan.live_database}")
        copy_tables(plan.database, plan.live_database, [t.table for t in plan.tables])


def copy_tables(backup_db: Path, live_db: Path, tables: list[str]) -> None:
    """Replace the rows of `tables` in the live database by the backup's, in one
    transaction; the live database is created and migrated first if it does not exist."""
    from appliance.storage.facade import Storage

    Storage.open(live_db.parent).close()  # create/migrate to this version's schema
    conn = sqlite3.connect(f"file:{live_db}", uri=True, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("ATTACH DATABASE ? AS backup", (f"file:{backup_db}?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        try:
            counters = dict(conn.execute("SELECT name, value FROM main.counters").fetchall())
            for table in tables:
                live_cols = [r[1] for r in conn.execute(f'PRAGMA main.table_info("{table}")')]
                backup_cols = {r[1] for r in conn.execute(f'PRAGMA backup.table_info("{table}")')}
                if not live_cols:
                    continue
                cols = ", ".join(f'"{c}"' for c in live_cols if c in backup_cols)
                conn.execute(f'DELETE FROM main."{table}"')  # noqa: S608 - names from the schema
                conn.execute(f'INSERT INTO main."{table}" ({cols}) '  # noqa: S608
                             f'SELECT {cols} FROM backup."{table}"')
            # Processes poll these counters to notice changes: never let one go back.
            for name, value in counters.items():
                conn.execute("UPDATE main.counters SET value = MAX(value, ?) + 1 WHERE name = ?",
                             (value, name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def maintenance_window(config_path: Path, home: Path, progress: Progress) -> WindowFactory:
    """The upgrade's mail-safe window (appliance/ops/maintenance.py) for this appliance."""

    def factory(config: Config) -> contextlib.AbstractContextManager[Any]:
        from appliance.ops.maintenance import MaintenanceWindow

        return MaintenanceWindow(config, reason="restore", config_path=config_path,
                                 home=home, progress=progress)

    return factory


def apply_with_window(plan: RestorePlan, config: Config, rollback_dir: Path, *,
                      window: WindowFactory, progress: Progress) -> None:
    """Apply inside the maintenance window; roll back on an error or a failed health
    gate (the window then runs once more, to bring the old state back up)."""
    try:
        from appliance.ops.maintenance import HealthGateFailed
    except ImportError:  # the ops package is not there: no window can fail a gate
        class HealthGateFailed(Exception):  # type: ignore[no-redef]
            pass

    rollback = Rollback(rollback_dir)
    progress("maintenance window: new mail is deferred (421/451) while services are down")
    try:
        with window(config):
            try:
                apply_plan(plan, rollback, progress)
            except BaseException:
                progress("restore failed: putting the previous files back")
                rollback.put_back()
                raise
    except HealthGateFailed as exc:
        progress(f"health gate failed ({exc}): rolling back to the previous files")
        try:
            with window(config):
                rollback.put_back()
        except HealthGateFailed as again:
            raise BackupError(f"restore rolled back, but the appliance is not healthy with "
                              f"the previous files either: {again} (the restore's own "
                              f"failure: {exc})") from again
        raise BackupError(f"restore rolled back: the appliance was not healthy with the "
                          f"restored files: {exc}") from exc
