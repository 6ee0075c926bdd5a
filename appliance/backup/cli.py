"""`postwall backup [list|keygen]` and `postwall restore`: click commands, thin on purpose
(the work is in run.py and restore.py)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import click

from appliance.backup.errors import BackupError
from appliance.cli import config_option

DEFAULT_HOME = Path("/opt/postwall")


def _load(config_path: Path):  # type: ignore[no-untyped-def]
    from appliance.cli import load_or_exit

    return load_or_exit(config_path)


def _progress(line: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    click.echo(f"[{stamp}] {line}", err=True)


@click.group(invoke_without_command=True)
@config_option
@click.pass_context
def backup(ctx: click.Context, config_path: Path) -> None:
    """Back up configuration and state to every configured target (see `list`, `keygen`).

    A snapshot of every database is taken while the proxy runs; the tarball is verified
    by a trial restore, uploaded, read back and compared. Exit 1 on any failure."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config_path
        return
    from appliance.backup.run import run_backup

    loaded = _load(config_path)
    try:
        result = run_backup(loaded, progress=_progress)
    except BackupError as exc:
        click.echo(f"backup FAILED: {exc}", err=True)
        sys.exit(1)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for label, names in result.deleted.items():
        for name in names:
            click.echo(f"retention: removed {name} from {label}", err=True)
    click.echo(result.summary())


@backup.command("list")
@config_option
def backup_list(config_path: Path) -> None:
    """List the backups on every configured target, oldest first."""
    from appliance.backup.targets import configured_targets

    loaded = _load(config_path)
    targets = configured_targets(loaded.config.backup)
    if not targets:
        raise click.ClickException("no backup target: set backup.directory and/or backup.smb")
    failed = False
    for target in targets:
        click.echo(f"{target.label}:")
        try:
            backups = target.backups()
        except BackupError as exc:
            click.echo(f"  error: {exc}")
            failed = True
            continue
        if not backups:
            click.echo("  (no backups)")
        for item in backups:
            click.echo(f"  {item.name}  {item.when:%Y-%m-%d %H:%M:%S} UTC  host {item.host}"
                       + ("  encrypted" if item.encrypted else ""))
    if failed:
        sys.exit(1)


@backup.command("keygen")
@click.argument("key_file", type=click.Path(path_type=Path, dir_okay=False))
def backup_keygen(key_file: Path) -> None:
    """Write a new random encryption key to KEY_FILE (mode 0600; never overwrites).

    Set backup.encryption_key_file to it, and keep a copy somewhere else: a backup
    cannot be restored without its key."""
    from appliance.backup.crypto import keygen

    try:
        key_id = keygen(key_file)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {key_file} (key id {key_id}); keep a copy away from this appliance")


@click.command()
@config_option
@click.argument("source", required=False)
@click.option("--latest", is_flag=True, help="The newest backup of this host on the targets.")
@click.option("--list", "list_only", is_flag=True, help="List the backups and stop.")
@click.option("--dry-run", is_flag=True, help="Check the backup and show what would change.")
@click.option("--only", default=None, metavar="COMPONENTS",
              help="Comma-separated: config, lists, statistics, state, mail, system "
                   "(default: all but system).")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Key file for an encrypted backup (default: backup.encryption_key_file).")
@click.option("--host", default=None, help="With --latest: the host whose backup to take "
              "(default: this host's name).")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_HOME,
              show_default=True, help="Install root (releases/, current/) of the services.")
@click.pass_context
def restore(ctx: click.Context, config_path: Path, source: str | None, latest: bool,
            list_only: bool, dry_run: bool, only: str | None, key_file: Path | None,
            host: str | None, home: Path) -> None:
    """Restore a backup: SOURCE is a backup file's path or a backup's name on a target.

    Every hash is checked before anything changes. Services are stopped in a maintenance
    window (port 25 answers 4xx, so senders retry), files are replaced, and if the
    appliance is not healthy afterwards the previous files are put back."""
    from appliance.backup import restore as restoring
    from appliance.backup.crypto import load_key
    from appliance.backup.lock import exclusive_run
    from appliance.backup.run import work_dir
    from appliance.backup.targets import configured_targets

    if list_only:
        ctx.invoke(backup_list, config_path=config_path)
        return
    if (source is None) == (not latest):
        raise click.UsageError("give exactly one of: a backup path or name, --latest, --list")
    loaded = _load(config_path)
    config = loaded.config
    try:
        components = restoring.parse_only(only)
        key_path = key_file or config.backup.encryption_key_file
        key = load_key(key_path) if key_path else None
        with exclusive_run(config.data_dir, "restore"):
            work = work_dir(config.data_dir, "restore-")
            try:
                archive = _fetch(source, latest, host, config, work, configured_targets)
                plan = restoring.prepare(archive, work / "scratch", key, config_path=config_path,
                                         live=config, components=components,
                                         progress=_progress)
                for line in plan.describe():
                    click.echo(line)
                if dry_run:
                    click.echo(f"dry run: {archive.name} is complete and intact; nothing changed")
                    return
                restoring.apply_with_window(plan, config, work / "rollback",
                                            window=restoring.maintenance_window(
                                                config_path, home, _progress),
                                            progress=_progress)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except BackupError as exc:
        click.echo(f"restore FAILED: {exc}", err=True)
        sys.exit(1)
    except (OSError, sqlite3.Error) as exc:
        click.echo(f"restore FAILED: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"restored {archive.name} ({', '.join(components)})")


def _fetch(source, latest, host, config, work, configured_targets):  # type: ignore[no-untyped-def]
    """The backup as a local file: a path as it is, a name downloaded from its target."""
    if source is not None and ("/" in source or Path(source).exists()):
        path = Path(source)
        if not path.is_file():
            raise BackupError(f"{source}: no such backup file")
        return path
    from appliance.backup.archive import safe_host
    from appliance.backup.restore import find_backup

    targets = configured_targets(config.backup)
    wanted_host = None if source else safe_host(host or socket.gethostname())
    target, name = find_backup(targets, source, wanted_host)
    local = work / name
    _progress(f"downloading {name} from {target.label}")
    target.download(name, local)
    return local


def register(main: click.Group) -> None:
    main.add_command(backup)
    main.add_command(restore)

