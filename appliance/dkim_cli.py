"""`postwall dkim ...`: make, rotate, show and remove the DKIM signing keys."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli import config_option, load_or_exit


def _data_dir(config_path: Path) -> Path:
    return Path(load_or_exit(config_path).config.data_dir)


def _echo_record(record) -> None:  # type: ignore[no-untyped-def]
    state = "active" if record.active else "published, not signing"
    click.echo(f"; {record.domain} selector {record.selector} ({record.algorithm}, {state}, "
               f"made {record.created:%Y-%m-%d})")
    click.echo(record.zone_line())


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def dkim() -> None:
    """DKIM signing keys of outgoing mail (<data_dir>/dkim/<domain>/<selector>.key)."""


algorithm_option = click.option(
    "--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True,
    help="rsa is understood by every verifier; ed25519 (RFC 8463) only by some.",
)
bits_option = click.option(
    "--bits", type=click.Choice(["1024", "2048", "3072", "4096"]), default="2048",
    show_default=True, help="RSA key size.",
)


@dkim.command("generate")
@config_option
@click.argument("domain")
@click.option("--selector", help="Selector name (default: pwYYYYMMDD).")
@algorithm_option
@bits_option
def generate(config_path: Path, domain: str, selector: str | None, algorithm: str,
             bits: str) -> None:
    """Make a key for DOMAIN and print its DNS record. It signs at once only if DOMAIN
    has no active key yet; otherwise use `rotate`, or `activate` once it is published."""
    from appliance import dkim_keys

    try:
        record = dkim_keys.generate(_data_dir(config_path), domain, selector,
                                    algorithm=algorithm, bits=int(bits))  # type: ignore[arg-type]
    except dkim_keys.DKIMKeyError as exc:
        raise _fail(exc) from None
    _echo_record(record)


@dkim.command("rotate")
@config_option
@click.argument("domain")
@click.option("--selector", help="Selector of the new key (default: pwYYYYMMDD).")
@algorithm_option
@bits_option
def rotate(config_path: Path, domain: str, selector: str | None, algorithm: str,
           bits: str) -> None:
    """Make a new key for DOMAIN that signs from now on. Publish its record first (or at
    once): receivers cannot verify until it is in DNS. The old key stays published
    until `postwall dkim remove`."""
    from appliance import dkim_keys

    try:
        record = dkim_keys.rotate(_data_dir(config_path), domain, selector,
                                  algorithm=algorithm, bits=int(bits))  # type: ignore[arg-type]
    except dkim_keys.DKIMKeyError as exc:
        raise _fail(exc) from None
    _echo_record(record)


@dkim.command("activate")
@config_option
@click.argument("domain")
@click.argument("selector")
def activate(config_path: Path, domain: str, selector: str) -> None:
    """Sign DOMAIN's mail with SELECTOR's key from now on."""
    from appliance import dkim_keys

    try:
        dkim_keys.activate(_data_dir(config_path), domain, selector)
    except dkim_keys.DKIMKeyError as exc:
        raise _fail(exc) from None
    click.echo(f"{domain}: {selector} signs from now on")


@dkim.command("show")
@config_option
@click.argument("domain")
def show(config_path: Path, domain: str) -> None:
    """Print the DNS TXT records to publish for DOMAIN (one per selector)."""
    from appliance import dkim_keys

    try:
        records = dkim_keys.dns_records(_data_dir(config_path), domain)
    except dkim_keys.DKIMKeyError as exc:
        raise _fail(exc) from None
    if not records:
        raise click.ClickException(f"no DKIM key for {domain}: postwall dkim generate {domain}")
    for record in records:
        _echo_record(record)


@dkim.command("remove")
@config_option
@click.argument("domain")
@click.argument("selector")
def remove(config_path: Path, domain: str, selector: str) -> None:
    """Delete an old selector's key (then remove its DNS record)."""
    from appliance import dkim_keys

    try:
        path = dkim_keys.remove(_data_dir(config_path), domain, selector)
    except dkim_keys.DKIMKeyError as exc:
        raise _fail(exc) from None
    click.echo(f"removed {path}; now delete {selector}._domainkey.{domain} from DNS")
