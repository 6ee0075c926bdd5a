"""`postwall webui ...`: serve the UI, create the first administrator."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from appliance.cli import config_option, load_or_exit

PASSWORD_FILE_NAME = "initial-admin-password"  # noqa: S105 - a file name


@click.group()
def webui() -> None:
    """The web UI: HTTPS administration of the appliance."""


@webui.command()
@config_option
def serve(config_path: Path) -> None:
    """Serve the web UI over HTTPS on webui.listen."""
    from webui.server import ServeError
    from webui.server import serve as run

    load_or_exit(config_path)
    try:
        sys.exit(run(config_path))
    except ServeError as exc:
        raise click.ClickException(str(exc)) from exc


def write_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".pw-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@webui.command("init-admin")
@config_option
@click.option("--username", default="admin", show_default=True, help="Administrator's name.")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Where the generated password goes (mode 0600) "
                   "[default: DATA_DIR/webui/initial-admin-password].")
@click.option("--password-from", type=click.File("r"),
              help="Take the password from this file ('-' for standard input), e.g. from "
                   "a vault, instead of generating one; nothing is written then.")
@click.option("--reset", is_flag=True,
              help="If the user exists, give it a new one-time password (and unlock it).")
def init_admin(config_path: Path, username: str, password_file: Path | None,
               password_from: click.utils.LazyFile | None, reset: bool) -> None:
    """Create the first administrator with a one-time password.

    There is no default password: a random one is generated into a file only its owner
    can read (or taken from --password-from), and the first login must change it. Run
    again it changes nothing, unless --reset."""
    from appliance.storage.facade import Storage
    from appliance.storage.users import validate_username
    from webui.passwords import generate_password, hash_password, password_problem
    from webui.state import WEBUI_DIRNAME

    loaded = load_or_exit(config_path)
    try:
        validate_username(username)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--username") from exc
    if password_from is not None:
        password = password_from.read().rstrip("\r\n")
        problem = password_problem(password, username=username,
                                   min_length=loaded.config.webui.password_min_length)
        if problem:
            raise click.ClickException(f"the given password is not acceptable: {problem}")
    else:
        password = generate_password()
    data_dir = loaded.config.data_dir
    target: Path | None = None
    storage = Storage.open(data_dir)
    try:
        existing = storage.users.get(username)
        if existing is not None and not reset:
            click.echo(f"user {username} exists; nothing changed (--reset gives it a new "
                       "one-time password)")
            return
        if password_from is None:
            target = password_file or data_dir / WEBUI_DIRNAME / PASSWORD_FILE_NAME
            write_secret_file(target, password)
        hashed = hash_password(password)
        if existing is None:
            storage.users.create(username, hashed, "admin", must_change_password=True)
            action = "users.add"
        else:
            storage.users.set_password(username, hashed, must_change=True)
            if existing.role != "admin":
                storage.users.set_role(username, "admin")
            action = "users.reset_password"
        actor = os.environ.get("SUDO_USER") or "cli"
        storage.audit.record(actor, action, username, None, "role admin (init-admin)")
    finally:
        storage.close()
    where = "as given" if password_from is not None else f"in {target}"
    click.echo(f"administrator {username} ready; its one-time password is {where}; the first "
               "login must change it")
