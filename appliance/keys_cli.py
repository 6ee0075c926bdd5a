"""`postwall batv rotate` and `postwall srs rotate`: a new signing key, the old ones kept
while what they signed may still come back (see appliance/keyrotation.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import click

from appliance import batv, srs
from appliance.cli import config_option
from appliance.keyfile import KeyFileError
from appliance.keyrotation import KeyLine, Rotation, batv_line, rotate, srs_line


def _when(key: KeyLine) -> str:
    return key.created.strftime("%Y-%m-%d %H:%M UTC") if key.created else "creation unknown"


def _rotate_and_reload(data_dir: Path, label: str, path: Path, window: timedelta,
                       make_line: Callable[[list[KeyLine]], str],
                       describe: Callable[[KeyLine], str]) -> None:
    from appliance.control import ControlClient, ControlError

    try:
        rotation: Rotation = rotate(path, make_line, window)
    except (KeyFileError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{label} key file {path}: new signing key {describe(rotation.new)}")
    for key in rotation.kept:
        click.echo(f"  kept for verification: {describe(key)} ({_when(key)})")
    for key in rotation.dropped:
        click.echo(f"  dropped (retired more than {window.days} days ago): {describe(key)}")
    try:
        ControlClient(data_dir).reload()
    except (ControlError, OSError) as exc:
        click.echo(f"proxy not reloaded ({exc}): it uses the new key when it starts or "
                   "reloads (systemctl reload postwall)")
        return
    click.echo("proxy asked to reload: its workers sign with the new key from now on")


def _batv_describe(key: KeyLine) -> str:
    return f"number {key.line[0]}"


def _srs_describe(key: KeyLine) -> str:
    return f"{key.line[:6]}..."  # enough to tell secrets apart, too little to use one


@click.group("batv")
def batv_group() -> None:
    """BATV (backscatter protection) keys."""


@batv_group.command("rotate")
@config_option
def batv_rotate(config_path: Path) -> None:
    """Sign with a new key; keep older keys while their tags are valid (valid_days)."""
    from appliance.cli import load_or_exit

    config = load_or_exit(config_path).config
    settings = config.filters.batv
    path = settings.key_file or config.data_dir / "batv.keys"
    # A tag lives valid_days after its day, which can start just before midnight, and a
    # checking clock may run a day behind.
    window = timedelta(days=settings.valid_days + 1 + batv.CLOCK_SKEW_DAYS)
    _rotate_and_reload(config.data_dir, "BATV", path, window, batv_line, _batv_describe)


@click.group("srs")
def srs_group() -> None:
    """SRS (forwarding) secrets."""


@srs_group.command("rotate")
@config_option
def srs_rotate(config_path: Path) -> None:
    """Sign with a new secret; keep older ones while their addresses are valid
    (max_age_days)."""
    from appliance.cli import load_or_exit

    config = load_or_exit(config_path).config
    settings = config.filters.srs
    path = settings.key_file or config.data_dir / "srs.keys"
    window = timedelta(days=settings.max_age_days + 1 + srs.CLOCK_SKEW_DAYS)
    _rotate_and_reload(config.data_dir, "SRS", path, window, srs_line, _srs_describe)


def register(main: click.Group) -> None:
    main.add_command(batv_group)
    main.add_command(srs_group)
