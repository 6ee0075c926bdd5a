"""`postwall`: the one command-line entry point, one small function per subcommand."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from appliance import __version__

if TYPE_CHECKING:
    from appliance.config import loader
    from appliance.config.schema import Config

DEFAULT_CONFIG = Path("/etc/postwall/postwall.yml")

config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG, show_default=True, help="Base configuration file.",
)


def load_or_exit(path: Path) -> loader.LoadedConfig:
    from appliance.config import loader

    if not path.exists():
        raise click.ClickException(f"{path}: no such configuration file")
    try:
        return loader.load(path)
    except loader.ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="postwall")
def main() -> None:
    """Postwall: an anti-spam SMTP proxy in front of your mail server."""


@main.command()
@config_option
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes sharing the ports (default: one per core).")
def serve(config_path: Path, workers: int | None) -> None:
    """Run the proxy on the configured listeners."""
    from appliance.smtp.supervisor import Supervisor

    if not config_path.exists():
        raise click.ClickException(f"{config_path}: no such configuration file")
    count = workers or os.cpu_count() or 1
    sys.exit(Supervisor(config_path, count).run())


@main.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate the configuration and print the resolved pipeline and list files.

    Exit 2: the configuration is invalid; 1: a list file it names cannot be used."""
    from appliance.config import loader
    from appliance.runtime import Runtime

    loaded = load_or_exit(config_path)
    # The runtime reads the list files too; their problems are reported once, below.
    listfiles_log = logging.getLogger("postwall.listfiles")
    level = listfiles_log.level
    listfiles_log.setLevel(logging.CRITICAL)
    try:
        runtime = Runtime(loaded, None, record=False)
    except (ValueError, loader.ConfigError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        listfiles_log.setLevel(level)
    config = loaded.config
    click.echo(f"configuration OK: {loaded.base_path}"
               + (f" + {loaded.overrides_path}" if loaded.overrides_path
                  and loaded.overrides_path.exists() else ""))
    click.echo(f"listeners: inbound={config.listen.inbound} relay={config.listen.relay or 'off'}")
    click.echo(f"downstream: {config.downstream.host}:{config.downstream.port}")
    domains = ", ".join(config.local_domains) or "(none: the inbound listener accepts nobody)"
    click.echo(f"local domains: {domains}")
    click.echo(f"test mode: {'on' if config.test_mode else 'off'}")
    t = config.scoring.thresholds
    click.echo(f"thresholds: tag={t.tag} quarantine={t.quarantine} discard={t.discard} "
               f"reject={t.reject}")
    click.echo("pipeline:")
    for line in runtime.pipeline.describe():
        click.echo(f"  {line}")
    click.echo("symbols:")
    for filter_ in runtime.pipeline.ordered():
        for spec in (*filter_.symbols, *filter_.configured_symbols(filter_.settings)):
            weight = filter_.weight(spec.name)
            source = "config" if spec.name in config.scoring.weights else "default"
            group = f" [{spec.group}]" if spec.group else ""
            click.echo(f"  {spec.name:28} {weight:+7.2f} ({source}){group}  {spec.description}")
    if not _report_list_files(config):
        sys.exit(1)


def _report_list_files(config: Config) -> bool:
    """Read every `file:` list the configuration names, as the proxy would; print each
    file's state. False if one cannot be used (unreadable, unsafe): the proxy runs, but
    that file adds nothing. A missing file and bad lines are warnings: the proxy reads the
    file when it appears, and the rest of a file applies."""
    from appliance.listfiles import MAX_LOGGED_BAD_LINES, inspect_files
    from appliance.services import list_file_refs

    states = inspect_files(list_file_refs(config))
    if not states:
        return True
    click.echo("list files:")
    usable = True
    for state in states:
        if state.problem is not None and not os.path.lexists(state.path):
            # Not yet there (a share not mounted, a script's first run): the proxy picks
            # it up when it appears, so this must not block a deployment or an upgrade.
            click.echo(f"  {state.path} ({state.kind.value}): MISSING")
            click.echo(f"warning: {state.problem}; this list file adds no entries until it "
                       "appears", err=True)
            continue
        if state.problem is not None:
            usable = False
            click.echo(f"  {state.path} ({state.kind.value}): UNUSABLE")
            click.echo(f"error: {state.problem}; this list file adds no entries until fixed",
                       err=True)
            continue
        bad = f", {state.bad_lines} bad line(s) skipped" if state.bad_lines else ""
        click.echo(f"  {state.path} ({state.kind.value}): {state.entries} entries{bad}")
        for error in state.errors[:MAX_LOGGED_BAD_LINES]:
            click.echo(f"warning: {state.path}:{error.removeprefix('line ')}", err=True)
        if len(state.errors) > MAX_LOGGED_BAD_LINES:
            click.echo(f"warning: {state.path}: {len(state.errors) - MAX_LOGGED_BAD_LINES} "
                       "more bad lines", err=True)
    return usable


@main.command()
@config_option
@click.argument("message", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--from", "sender", help="Envelope sender (default: Return-Path or From).")
@click.option("--to", "recipients", multiple=True, help="Envelope recipient (repeatable).")
@click.option("--ip", "client_ip", default="192.0.2.1", show_default=True,
              help="Client IP address the message came from.")
@click.option("--helo", default=None,
              help="Client HELO name (default: none given, the HELO checks are skipped).")
def analyze(config_path: Path, message: Path, sender: str | None,
            recipients: tuple[str, ...], client_ip: str, helo: str | None) -> None:
    """Run the whole pipeline on MESSAGE without sending it; print every symbol."""
    import ipaddress

    from appliance.analysis import analyze as run_analysis
    from appliance.runtime import Runtime

    try:
        ipaddress.ip_address(client_ip)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ip") from exc
    loaded = load_or_exit(config_path)
    storage = open_storage_if_present(loaded.config.data_dir)
    runtime = Runtime(loaded, storage, record=False)
    content = message.read_bytes()
    result = asyncio.run(run_analysis(
        runtime, content, sender=sender, recipients=list(recipients) or None,
        client_ip=client_ip, helo=helo,
    ))
    click.echo(f"message: {message} ({len(content)} bytes)")
    click.echo(result.render())
    if storage is not None:
        storage.close()


@main.group()
def lists() -> None:
    """Show and change the white/black/red/noprocessing/spamlover and IP lists.

    Entries here live in the database (the web UI and the mail interface edit the same
    ones); entries in the configuration file are shown by check-config. Running proxies
    pick up changes within a few seconds."""


def open_storage_or_exit(config_path: Path):  # type: ignore[no-untyped-def]
    from appliance.storage.facade import Storage

    loaded = load_or_exit(config_path)
    try:
        return Storage.open(loaded.config.data_dir)
    except Exception as exc:
        raise click.ClickException(f"cannot open {loaded.config.data_dir}: {exc}") from exc


LIST_CHOICE = click.Choice(
    ["whitelist", "blacklist", "redlist", "noprocessing", "spamlovers", "ip_allow", "ip_deny",
     "autowhitelist", "valid_recipients"]
)


@lists.command("show")
@config_option
@click.argument("name", type=LIST_CHOICE)
@click.option("--search", help="Only entries whose value or comment contains this text.")
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
def lists_show(config_path: Path, name: str, search: str | None, limit: int) -> None:
    """Print the entries of list NAME: the database's, then the configuration's and those
    of its list files (read-only here: source=file:PATH:LINE; edit the file)."""
    storage = open_storage_or_exit(config_path)
    try:
        for entry in storage.lists.entries(name, search=search, limit=limit):
            expires = (
                entry.expires_at.isoformat(timespec="seconds") if entry.expires_at else "never"
            )
            comment = f"  # {entry.comment}" if entry.comment else ""
            click.echo(f"{entry.value}\texpires={expires}\tsource={entry.source}{comment}")
    finally:
        storage.close()
    _show_config_and_file_entries(load_or_exit(config_path).config, name, search)


def _show_config_and_file_entries(config: Config, name: str, search: str | None) -> None:
    from appliance.listfiles import ListFiles
    from appliance.services import config_entries, config_files, file_kind, list_file_refs

    def wanted(value: str) -> bool:
        return not search or search.lower() in value.lower()

    for value in config_entries(config).get(name, []):
        if wanted(value):
            click.echo(f"{value}\texpires=never\tsource=config")
    paths = config_files(config).get(name, [])
    if not paths:
        return
    files = ListFiles(settle_seconds=0)
    files.watch(r for r in list_file_refs(config) if r[0] in paths)
    problems = {state.path: state.problem for state in files.states()}
    for path in paths:
        if problems.get(path):
            click.echo(f"warning: {problems[path]}", err=True)
        loaded = files.get(path, file_kind(name))
        for value, line in zip(loaded.entries if loaded else (), loaded.lines if loaded else (),
                               strict=True):
            if wanted(value):
                click.echo(f"{value}\texpires=never\tsource=file:{path}:{line}")


@lists.command("add")
@config_option
@click.argument("name", type=LIST_CHOICE)
@click.argument("values", nargs=-1, required=True)
@click.option("--days", type=click.IntRange(1, 36500), help="Expire after this many days.")
@click.option("--comment", default="", help="Why the entry exists (shown in the UI).")
def lists_add(config_path: Path, name: str, values: tuple[str, ...], days: int | None,
              comment: str) -> None:
    """Add VALUES (addresses, @domains, *wildcards, /regex/, or CIDR for ip_*) to NAME."""
    from datetime import UTC, datetime, timedelta

    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    storage = open_storage_or_exit(config_path)
    try:
        for value in values:
            try:
                entry = storage.lists.add(name, value, expires_at=expires, comment=comment,
                                          added_by=os.environ.get("SUDO_USER") or "cli",
                                          source="ui")
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"added {entry.value} to {name}")
    finally:
        storage.close()


@lists.command("remove")
@config_option
@click.argument("name", type=LIST_CHOICE)
@click.argument("values", nargs=-1, required=True)
def lists_remove(config_path: Path, name: str, values: tuple[str, ...]) -> None:
    """Remove VALUES from list NAME."""
    storage = open_storage_or_exit(config_path)
    missing = 0
    try:
        for value in values:
            try:
                removed = storage.lists.remove(name, value)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"{'removed' if removed else 'not found:'} {value}")
            missing += not removed
    finally:
        storage.close()
    if missing:
        sys.exit(1)


@main.group()
def learn() -> None:
    """Teach the statistical classifier, rebuild it, show what it knows.

    Every message is recorded once in the training ledger; learning a message again
    with the other label corrects it (the old counts are taken off first)."""


@learn.command("spam")
@config_option
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--weight", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many times each message counts.")
def learn_spam(config_path: Path, files: tuple[Path, ...], weight: int) -> None:
    """Learn FILES (one message each) as spam."""
    _learn_files(config_path, files, "spam", weight)


@learn.command("ham")
@config_option
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--weight", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many times each message counts.")
def learn_ham(config_path: Path, files: tuple[Path, ...], weight: int) -> None:
    """Learn FILES (one message each) as ham (not spam)."""
    _learn_files(config_path, files, "ham", weight)


def _learn_files(config_path: Path, files: tuple[Path, ...], label: str, weight: int) -> None:
    from appliance.classifier.learner import LearnJob
    from appliance.learning_loop import learner_for

    loaded = load_or_exit(config_path)
    storage = open_storage_or_exit(config_path)
    who = os.environ.get("SUDO_USER") or "cli"
    refused = 0
    try:
        learner = learner_for(storage, loaded.config)
        for start in range(0, len(files), 50):  # one transaction per 50 files
            chunk = files[start : start + 50]
            jobs = [LearnJob(path.read_bytes(), label, "cli", who, weight) for path in chunk]
            for path, result in zip(chunk, learner.learn_many(jobs), strict=True):
                click.echo(f"{path}: {result.describe()}")
                refused += result.status == "refused"
    finally:
        storage.close()
    if refused:
        sys.exit(1)


@learn.command("rebuild")
@config_option
def learn_rebuild(config_path: Path) -> None:
    """Apply the corpus retention and recount every token from the corpus."""
    from appliance.learning_loop import learner_for

    loaded = load_or_exit(config_path)
    storage = open_storage_or_exit(config_path)
    settings = loaded.config.learning
    try:
        report = learner_for(storage, loaded.config).rebuild(
            max_age_days=settings.corpus_max_age_days, max_per_label=settings.corpus_max_messages
        )
    finally:
        storage.close()
    click.echo(f"rebuilt from {report.messages} messages ({report.spam} spam / {report.ham} "
               f"ham, weighted): {report.tokens} tokens; {report.expired} left the corpus, "
               f"{report.missing} had no copy; {report.seconds:g}s")


@learn.command("status")
@config_option
def learn_status(config_path: Path) -> None:
    """What the classifier was trained on."""
    storage = open_storage_or_exit(config_path)
    try:
        training = storage.training
        totals = training.totals()
        click.echo(f"messages learned: {training.count('spam')} spam, {training.count('ham')} "
                   f"ham (weighted {totals.spam} / {totals.ham})")
        click.echo(f"tokens: {training.token_count()}  generation: {totals.generation}")
        for entry in training.entries(limit=10):
            click.echo(f"  {entry.learned_at.isoformat(timespec='seconds')} {entry.label:4} "
                       f"x{entry.weight} {entry.source:10} {entry.who[:30]:30} "
                       f"{entry.subject[:50]}")
    finally:
        storage.close()


def open_storage_if_present(data_dir: Path):  # type: ignore[no-untyped-def]
    from appliance.storage.facade import DB_FILENAME, Storage

    if not (data_dir / DB_FILENAME).exists():
        return None
    try:
        return Storage.open(data_dir)
    except Exception as exc:
        click.echo(f"warning: lists in {data_dir} unavailable: {exc}", err=True)
        return None


# -- greylist and penalty box ----------------------------------------------------------


def open_config_and_storage(config_path: Path):  # type: ignore[no-untyped-def]
    from appliance.storage.facade import Storage

    loaded = load_or_exit(config_path)
    try:
        return loaded.config, Storage.open(loaded.config.data_dir)
    except Exception as exc:
        raise click.ClickException(f"cannot open {loaded.config.data_dir}: {exc}") from exc


def _when(moment) -> str:  # type: ignore[no-untyped-def]
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


@main.group()
def greylist() -> None:
    """Show and clear the greylist: triplets (client network, sender, recipient) delayed
    now, and those that passed. Running proxies notice a clear within a few seconds."""


@greylist.command("show")
@config_option
@click.option("--passed", is_flag=True, help="Triplets that passed instead of delayed ones.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
def greylist_show(config_path: Path, passed: bool, limit: int, offset: int) -> None:
    """Print the delayed (or passed) triplets, newest first."""
    from datetime import UTC, datetime

    config, storage = open_config_and_storage(config_path)
    try:
        counts = storage.greylist.counts()
        click.echo(f"delayed: {counts['delayed']}  passed: {counts['passed']}  "
                   f"client networks: {counts['clients']}  "
                   f"(greylisting is {config.filters.greylist.mode.value})")
        store = storage.greylist
        entries = store.passed(limit, offset) if passed else store.delayed(limit, offset)
        now = datetime.now(UTC)
        delay = config.filters.greylist.delay
        for e in entries:
            if e.passed_at is not None:
                state = f"passed={_when(e.passed_at)} last_used={_when(e.last_seen)}"
            else:
                wait = delay - (now - e.first_seen).total_seconds()
                state = f"retry in {wait:.0f}s" if wait > 0 else "retry now passes"
            click.echo(f"{e.client_net}\t<{e.sender}> -> <{e.recipient}>\t"
                       f"first={_when(e.first_seen)}\tattempts={e.attempts}\t{state}")
    finally:
        storage.close()


@greylist.command("clear")
@config_option
@click.argument("client", required=False)
@click.option("--all", "everything", is_flag=True, help="Forget every triplet and network.")
def greylist_clear(config_path: Path, client: str | None, everything: bool) -> None:
    """Forget the triplets of CLIENT (an address or network), or everything with --all:
    their next attempt is delayed again."""
    import ipaddress

    from appliance.netblock import netblock

    if (client is None) == (not everything):
        raise click.UsageError("name one client address or network, or give --all")
    config, storage = open_config_and_storage(config_path)
    settings = config.filters.greylist
    network = None
    if client is not None:
        try:
            if "/" in client:
                network = str(ipaddress.ip_network(client, strict=False))
            else:
                network = netblock(client, settings.ipv4_prefix, settings.ipv6_prefix)
        except ValueError as exc:
            storage.close()
            raise click.BadParameter(str(exc), param_hint="CLIENT") from exc
    try:
        removed = storage.greylist.clear(network)
    finally:
        storage.close()
    click.echo(f"removed {removed} triplet(s){f' of {network}' if network else ''}")


@main.group()
def penalty() -> None:
    """Show and clear the penalty box: client scores that grow with bad behaviour and
    decay over time. Running proxies notice a clear within a few seconds."""


def _penalty_status(score: float, settings) -> str:  # type: ignore[no-untyped-def]
    if settings.reject_score is not None and score >= settings.reject_score:
        return "rejected (554)"
    if score >= settings.tempfail_score:
        return "tempfailed (421)"
    return "admitted"


@penalty.command("show")
@config_option
@click.argument("client", required=False)
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
def penalty_show(config_path: Path, client: str | None, limit: int) -> None:
    """Print CLIENT's score, or the clients with the highest scores now."""
    config, storage = open_config_and_storage(config_path)
    settings = config.filters.penalty_box
    try:
        if client is not None:
            try:
                entry = storage.penalty.get(client)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="CLIENT") from exc
            entries = [entry] if entry is not None else []
            if not entries:
                click.echo(f"{client}: no penalty score")
                sys.exit(1)
        else:
            entries = sorted(
                storage.penalty.entries(limit=1_000_000),
                key=lambda e: e.current(settings.half_life), reverse=True,
            )[:limit]
    finally:
        storage.close()
    click.echo(f"tempfail at {settings.tempfail_score:g}, reject at "
               f"{settings.reject_score if settings.reject_score is not None else 'never'}, "
               f"half-life {settings.half_life:g}s (penalty box is {settings.mode.value})")
    for entry in entries:
        score = entry.current(settings.half_life)
        click.echo(f"{entry.client}\tscore={score:.1f}\t{_penalty_status(score, settings)}\t"
                   f"events={entry.events}\tlast={_when(entry.updated_at)}\t{entry.last_reason}")


@penalty.command("clear")
@config_option
@click.argument("clients", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Empty the whole penalty box.")
def penalty_clear(config_path: Path, clients: tuple[str, ...], everything: bool) -> None:
    """Forget the scores of CLIENTS (addresses, or IPv6 /64s), or of everyone (--all)."""
    if bool(clients) == everything:
        raise click.UsageError("name client addresses, or give --all")
    _config, storage = open_config_and_storage(config_path)
    missing = 0
    try:
        if everything:
            click.echo(f"removed {storage.penalty.clear_all()} client(s)")
            return
        for client in clients:
            try:
                removed = storage.penalty.clear(client)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="CLIENTS") from exc
            click.echo(f"{'cleared' if removed else 'no score:'} {client}")
            missing += not removed
    finally:
        storage.close()
    if missing:
        sys.exit(1)
@main.command()
@config_option
def status(config_path: Path) -> None:
    """Check the proxy, Postfix, clamd, DNS and the disk; exit 1 if anything failed."""
    from appliance.status import State, overall, run_checks

    loaded = load_or_exit(config_path)
    results = run_checks(loaded.config)
    for result in results:
        click.echo(f"{result.state.value:8} {result.label:24} {result.summary}")
    sys.exit(1 if overall(results) is State.FAIL else 0)


@main.command()
@config_option
@click.option("--to", "version", metavar="VERSION", help="Install postwall==VERSION (pip).")
@click.option("--wheel", type=click.Path(path_type=Path, dir_okay=False),
              help="Install this wheel (postwall-VERSION-py3-none-any.whl).")
@click.option("--rollback", is_flag=True, help="Go back to the previous release.")
@click.option("--keep", type=click.IntRange(2, 50), default=None,
              help="Releases to keep (default: ops.keep_releases).")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False),
              default=Path("/opt/postwall"), show_default=True, help="The install root.")
@click.option("--no-backup", is_flag=True, help="Skip the backup taken first.")
def upgrade(config_path: Path, version: str | None, wheel: Path | None, rollback: bool,
            keep: int | None, home: Path, no_backup: bool) -> None:
    """Install a new release and switch to it mail-safely; roll back on any failure."""
    from appliance.ops.releases import ReleaseError
    from appliance.ops.upgrade import UpgradeError, Upgrader

    if sum(x is not None and x is not False for x in (version, wheel, rollback or None)) != 1:
        raise click.UsageError("give exactly one of --to VERSION, --wheel FILE, --rollback")
    loaded = load_or_exit(config_path)
    started = time.monotonic()
    upgrader = Upgrader(  # each step with the seconds since the start: where the time goes
        loaded.config, config_path, home,
        progress=lambda line: click.echo(f"[{time.monotonic() - started:5.1f}s] {line}", err=True),
    )
    try:
        if rollback:
            result = upgrader.rollback()
        else:
            result = upgrader.upgrade(version=version, wheel=wheel, keep=keep,
                                      backup=not no_backup)
    except (UpgradeError, ReleaseError) as exc:
        click.echo(f"upgrade failed: {exc}", err=True)
        sys.exit(1)
    window = result.window
    held = f", {window.seconds:.1f}s in maintenance" if window is not None else ""
    removed = f", removed {', '.join(result.removed)}" if result.removed else ""
    click.echo(f"{'rolled back' if rollback else 'upgraded'} {result.old} -> {result.new} "
               f"in {result.seconds:.1f}s{held}{removed}")
@main.group()
def notify() -> None:
    """Mail to the administrator: test it, see the daily summary, retry the spool."""


def _notifier_or_exit(config_path: Path, *, need_address: bool = True):  # type: ignore[no-untyped-def]
    from appliance.notify import Notifier

    notifier = Notifier(load_or_exit(config_path).config)
    if need_address and not notifier.enabled:
        raise click.ClickException("notifications.admin_address is not set")
    return notifier


@notify.command("test")
@config_option
def notify_test(config_path: Path) -> None:
    """Send a test mail to the administrator now (not rate-limited)."""
    notifier = _notifier_or_exit(config_path)
    route = notifier.send_text(
        "test notification", "This is a test of Postwall's notifications: if you read it, "
        "the administrator address and the mail route work.\n", "test")
    address = notifier.settings.admin_address
    if route in ("spooled", "lost"):
        click.echo(f"not delivered to {address}: {route} (see the log)", err=True)
        sys.exit(1)
    click.echo(f"sent to {address} through {route}")


@notify.command("summary")
@config_option
@click.option("--print", "print_only", is_flag=True, help="Print it instead of mailing it.")
def notify_summary(config_path: Path, print_only: bool) -> None:
    """The daily summary of the last 24 hours, now."""
    from appliance.notify.summary import build_text

    notifier = _notifier_or_exit(config_path, need_address=not print_only)
    storage = open_storage_or_exit(config_path)
    try:
        text = build_text(notifier, storage)
    finally:
        storage.close()
    if print_only:
        click.echo(text, nl=False)
        return
    route = notifier.send_text("daily summary", text, "summary")
    click.echo(f"sent to {notifier.settings.admin_address} through {route}")
    if route in ("spooled", "lost"):
        sys.exit(1)


@notify.command("flush")
@config_option
def notify_flush(config_path: Path) -> None:
    """Send the notifications waiting in the spool (the proxy retries them by itself)."""
    from appliance.notify.delivery import retry_spool

    notifier = _notifier_or_exit(config_path, need_address=False)
    sent, waiting = retry_spool(notifier.config, notifier.directory)
    click.echo(f"sent {sent}, still waiting {waiting}")
    sys.exit(1 if waiting else 0)


def _add_webui_commands() -> None:
    from webui.cli import webui  # the web UI's commands live with the web UI

    main.add_command(webui)


_add_webui_commands()


def _add_backup_commands() -> None:
    from appliance.backup.cli import register  # `postwall backup` and `postwall restore`

    register(main)


_add_backup_commands()
def _add_dkim_commands() -> None:
    from appliance.dkim_cli import dkim

    main.add_command(dkim)


_add_dkim_commands()


def _add_key_commands() -> None:
    from appliance.keys_cli import register  # `postwall batv rotate`, `postwall srs rotate`

    register(main)


_add_key_commands()


if __name__ == "__main__":
    main()
