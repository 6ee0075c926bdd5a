"""Health checks of the appliance, returned as results; renderers live elsewhere.

`postwall status` prints them and the web UI's dashboard shows them as green/amber/red
tiles, from this one code path. Every check has its own short timeout and all of them run
at once, so one dead service (a resolver that never answers) cannot hang the page.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from appliance.config.schema import Config
from appliance.control import ControlClient, config_fingerprint

CHECK_TIMEOUT = 3.0
DISK_WARN_PERCENT = 85.0
DISK_FAIL_PERCENT = 95.0


class State(StrEnum):
    OK = "ok"  # green
    WARN = "warn"  # amber: works, but look at it
    FAIL = "fail"  # red: broken, mail is affected
    UNKNOWN = "unknown"  # grey: not in use or cannot be known

    @property
    def rank(self) -> int:
        return {"ok": 0, "unknown": 1, "warn": 2, "fail": 3}[self.value]


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    summary: str  # one line: the reason for the colour
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str  # stable key: proxy, postfix, clamd, dns, disk, backup
    label: str  # what a person reads
    state: State
    summary: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    label: str
    run: Callable[[Config], Outcome]


# -- the checks ------------------------------------------------------------------------


def check_proxy(config: Config) -> Outcome:
    workers = ControlClient(config.data_dir, timeout=CHECK_TIMEOUT).workers()
    if not workers:
        return Outcome(
            State.FAIL,
            "not running: no worker answers on the control socket",
            str(config.data_dir / "run" / "control"),
        )
    sessions = sum(w.sessions for w in workers)
    pids = ", ".join(str(w.pid) for w in workers)
    summary = f"{len(workers)} worker(s), {sessions} open session(s)"
    if any(w.draining for w in workers):
        return Outcome(State.WARN, f"shutting down; {summary}", pids)
    expected = config_fingerprint(config)
    stale = [w.worker for w in workers if w.config != expected]
    if stale:
        return Outcome(
            State.WARN,
            f"{summary}; worker(s) {', '.join(map(str, stale))} run an older configuration "
            "(a reload is pending or was refused: see the proxy's log)",
            pids,
        )
    return Outcome(State.OK, summary, f"worker pids {pids}")


def check_postfix(config: Config) -> Outcome:
    host, port = config.downstream.host, config.downstream.port
    where = f"{host}:{port}"
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT) as sock:
            sock.settimeout(CHECK_TIMEOUT)
            greeting = _read_smtp_reply(sock)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
    except TimeoutError:
        return Outcome(State.FAIL, f"{where}: no greeting within {CHECK_TIMEOUT:g}s")
    except OSError as exc:
        return Outcome(State.FAIL, f"{where}: {exc.strerror or exc}")
    elapsed = (time.monotonic() - started) * 1000
    if not greeting.startswith("220"):
        return Outcome(State.FAIL, f"{where} answered {greeting!r}")
    return Outcome(State.OK, f"{where} answers ({elapsed:.0f} ms)", greeting)


def _read_smtp_reply(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") or _continued(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > 65536:
            break
    return data.decode("ascii", "replace").strip().splitlines()[-1] if data.strip() else ""


def _continued(data: bytes) -> bool:
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    return len(last) > 3 and last[3:4] == b"-"


def check_clamd(config: Config) -> Outcome:
    settings = getattr(config.filters, "clamav", None)
    if settings is None:
        return Outcome(State.UNKNOWN, "no virus scanner in this version")
    if str(getattr(settings, "mode", "off")) == "off":
        return Outcome(State.UNKNOWN, "the ClamAV filter is off")
    address = str(settings.address)
    try:
        reply = _clamd_command(address, b"zPING\0")
    except TimeoutError:
        return Outcome(State.FAIL, f"{address}: no answer within {CHECK_TIMEOUT:g}s")
    except OSError as exc:
        return Outcome(State.FAIL, f"{address}: {exc.strerror or exc}")
    if reply != "PONG":
        return Outcome(State.FAIL, f"{address} answered {reply!r} to PING")
    return Outcome(State.OK, f"{address} answers PING")


def _nameservers(config: Config) -> list[tuple[str, int]]:
    settings = getattr(config, "dns", None)
    configured = list(getattr(settings, "nameservers", None) or [])
    servers: list[tuple[str, int]] = []
    for entry in configured:
        text = entry.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            servers.append((host, int(rest[1:]) if rest.startswith(":") else 53))
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
            servers.append((host, int(port)))
        else:
            servers.append((text, 53))
    if servers:
        return servers
    import dns.resolver

    try:
        system = dns.resolver.Resolver(configure=True)
    except (dns.resolver.NoResolverConfiguration, OSError):
        return []
    return [(str(ns), int(system.port)) for ns in system.nameservers]


def check_dns(config: Config) -> Outcome:
    """Each resolver must answer a query that needs the internet (the root's NS set):
    DNSBL, SPF and DKIM checks depend on it. NXDOMAIN would count as an answer too."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    servers = _nameservers(config)
    if not servers:
        return Outcome(State.FAIL, "no resolver configured")
    working, broken = [], []
    for host, port in servers:
        where = f"{host}:{port}" if port != 53 else host
        query = dns.message.make_query(".", "NS")
        try:
            answer = dns.query.udp(query, host, timeout=min(2.0, CHECK_TIMEOUT), port=port)
        except dns.exception.Timeout:
            broken.append(f"{where}: timeout")
            continue
        except (OSError, dns.exception.DNSException) as exc:
            broken.append(f"{where}: {exc}")
            continue
        rcode = dns.rcode.to_text(answer.rcode())
        if answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            working.append(where)
        else:
            broken.append(f"{where}: {rcode}")
    if not working:
        return Outcome(State.FAIL, "; ".join(broken))
    if broken:
        working_text, broken_text = ", ".join(working), "; ".join(broken)
        return Outcome(State.WARN, f"answering: {working_text}; failing: {broken_text}")
    return Outcome(State.OK, f"answering: {', '.join(working)}")


def check_disk(config: Config) -> Outcome:
    path = Path(config.data_dir)
    try:
        usage = shutil.disk_usage(path)
        inodes = os.statvfs(path)
    except OSError as exc:
        return Outcome(State.FAIL, f"{path}: {exc.strerror or exc}")
    percent = 100.0 * usage.used / usage.total if usage.total else 0.0
    inode_percent = (
        100.0 * (inodes.f_files - inodes.f_ffree) / inodes.f_files if inodes.f_files else 0.0
    )
    worst = max(percent, inode_percent)
    summary = f"{percent:.0f}% used, {usage.free / 2**30:.1f} GiB free"
    if inode_percent >= DISK_WARN_PERCENT:
        summary += f", {inode_percent:.0f}% of inodes used"
    state = State.OK
    if worst >= DISK_FAIL_PERCENT:
        state = State.FAIL
    elif worst >= DISK_WARN_PERCENT:
        state = State.WARN
    return Outcome(state, summary, str(path))


BACKUP_WARN_HOURS = 26.0  # a nightly backup plus slack for a slow night
BACKUP_FAIL_HOURS = 72.0


def check_backup(config: Config) -> Outcome:
    from datetime import UTC, datetime

    from appliance.backup.state import read_state

    settings = getattr(config, "backup", None)
    if settings is None or not settings.configured:
        return Outcome(State.UNKNOWN, "backups are not configured (backup.directory/smb)")
    state = read_state(config.data_dir)
    verified = state.verified_at()
    if verified is None:
        if state.last_result == "failed":
            return Outcome(State.FAIL, f"no verified backup; the last run failed: "
                           f"{state.last_error}")
        return Outcome(State.WARN, "no verified backup yet: run `postwall backup`")
    hours = (datetime.now(UTC) - verified).total_seconds() / 3600
    age = f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.1f} days ago"
    summary = f"{state.last_verified_name} verified {age}"
    if state.last_result == "failed":
        return Outcome(State.FAIL, f"the last run failed ({state.last_error}); {summary}")
    if hours >= BACKUP_FAIL_HOURS:
        return Outcome(State.FAIL, summary)
    if hours >= BACKUP_WARN_HOURS:
        return Outcome(State.WARN, summary)
    return Outcome(State.OK, summary, ", ".join(state.targets))


# -- self-checks: the appliance as the internet sees it ----------------------------------
# Each returns a reason and what to do; "unknown" when it cannot be known here (no public
# address configured, no expected Postfix file, ...).

_SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_CLAMD_DATE_FORMAT = "%a %b %d %H:%M:%S %Y"


def _public_address(config: Config) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    configured = config.self_checks.public_address
    if configured:
        return ipaddress.ip_address(configured)
    host = config.listen.inbound.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return address if address.is_global else None


_NO_ADDRESS = Outcome(
    State.UNKNOWN, "the public address is not known: set self_checks.public_address to the "
    "address of your MX record"
)


def _resolver(config: Config):  # type: ignore[no-untyped-def]
    import dns.nameserver
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                            for host, port in _nameservers(config)]
    resolver.timeout = min(2.0, CHECK_TIMEOUT)
    resolver.lifetime = min(2.5, CHECK_TIMEOUT)
    resolver.cache = None
    return resolver


def _lookup(resolver, name: str, rdtype: str) -> list[str] | None:  # type: ignore[no-untyped-def]
    """Records as text; [] for no such name/no data; None when DNS did not answer."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError):
        return None
    return [r.to_text().rstrip(".").lower() for r in answer]


def check_hostname_ptr(config: Config) -> Outcome:
    """The greeting/HELO name must be the PTR of the public address, and resolve back."""
    from appliance.dns import reverse_pointer

    address = _public_address(config)
    if address is None:
        return _NO_ADDRESS
    hostname = config.smtp.hostname.lower().rstrip(".")
    if not _nameservers(config):
        return Outcome(State.UNKNOWN, "no resolver configured")
    resolver = _resolver(config)
    names = _lookup(resolver, reverse_pointer(address), "PTR")
    if names is None:
        return Outcome(State.UNKNOWN, f"no answer for the PTR of {address}: see the DNS check")
    if not names:
        return Outcome(State.FAIL, f"{address} has no PTR record: publish PTR {hostname} for "
                       f"{address} at your ISP (the owner of the address block)")
    if hostname not in names:
        return Outcome(State.FAIL, f"the PTR of {address} is {', '.join(names)}, not "
                       f"{hostname}: have your ISP change it to {hostname}, or set "
                       f"smtp.hostname to {names[0]}", f"greeting/HELO name: {hostname}")
    forward = (_lookup(resolver, hostname, "AAAA" if address.version == 6 else "A") or [])
    if str(address) not in forward:
        shown = ", ".join(forward) or "nothing"
        return Outcome(State.FAIL, f"{hostname} resolves to {shown}, not {address}: publish "
                       f"{'AAAA' if address.version == 6 else 'A'} {hostname} -> {address} "
                       "(the PTR alone is not forward-confirmed)")
    return Outcome(State.OK, f"{address} <-> {hostname} (PTR forward-confirmed)")


def check_own_dnsbl(config: Config) -> Outcome:
    """The appliance's own address on one of the configured DNS blocklists means that
    other servers refuse the mail it sends."""
    from appliance.dns import reverse_pointer

    address = _public_address(config)
    if address is None:
        return _NO_ADDRESS
    settings = config.filters.dnsbl
    zones = list(settings.zones)
    if not zones:
        return Outcome(State.UNKNOWN, "no DNSBL zones configured (filters.dnsbl.zones)")
    if not _nameservers(config):
        return Outcome(State.UNKNOWN, "no resolver configured")
    resolver = _resolver(config)
    with ThreadPoolExecutor(max_workers=min(8, len(zones))) as pool:
        answers = list(pool.map(
            lambda z: _lookup(resolver, reverse_pointer(address, z.zone), "A"), zones))
    listed, unknown = [], []
    for zone, records in zip(zones, answers, strict=True):
        if records is None:
            unknown.append(f"{zone.zone}: no answer")
            continue
        codes = [r for r in records if _in_loopback(r)]
        refused = [c for c in codes if c in zone.refusal_codes]
        if refused:
            unknown.append(f"{zone.zone}: refused us ({refused[0]})")
        elif codes:
            listed.append(f"{zone.zone} ({', '.join(codes)})")
    if listed:
        return Outcome(State.FAIL, f"{address} is listed on {'; '.join(listed)}: find why "
                       "(an infected host behind this address, an open relay, outgoing spam) "
                       "and ask each list for delisting on its website",
                       "; ".join(unknown))
    checked = len(zones) - len(unknown)
    if unknown and not checked:
        return Outcome(State.UNKNOWN, "; ".join(unknown))
    summary = f"{address} is on none of {checked} zone(s)"
    if unknown:
        return Outcome(State.WARN, f"{summary}; not checked: {'; '.join(unknown)}")
    return Outcome(State.OK, summary)


def _in_loopback(record: str) -> bool:
    try:
        return ipaddress.IPv4Address(record) in ipaddress.IPv4Network("127.0.0.0/8")
    except ValueError:
        return False


def _postconf(config: Config, *args: str) -> str:
    binary = shutil.which("postconf", path=_SAFE_PATH)
    if binary is None:
        raise FileNotFoundError("postconf is not installed")
    argv = [binary]
    if config.self_checks.postfix_config_dir is not None:
        argv += ["-c", str(config.self_checks.postfix_config_dir)]
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [*argv, *args], capture_output=True, text=True, timeout=CHECK_TIMEOUT,
        env={"PATH": _SAFE_PATH, "LC_ALL": "C"}, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError((result.stderr or result.stdout).strip()[:300] or
                           f"postconf exited {result.returncode}")
    return result.stdout


def parse_postconf(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not line.startswith((" ", "\t", "#")):
            settings[name.strip()] = value.strip()
    return settings


def postconf_differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(expected.keys() | actual.keys()):
        want, have = expected.get(name), actual.get(name)
        if want == have:
            continue
        if want is None:
            out.append(f"{name} added ({have})")
        elif have is None:
            out.append(f"{name} removed (was {want})")
        else:
            out.append(f"{name} = {have} (expected {want})")
    return out


def check_postfix_config(config: Config) -> Outcome:
    """`postconf -n` against what the postfix role saved after configuring Postfix."""
    path = config.self_checks.postfix_expected_file
    try:
        expected = parse_postconf(path.read_text())
    except FileNotFoundError:
        return Outcome(State.UNKNOWN, f"{path} does not exist: the postfix role writes it "
                       "(re-run the playbook to create it)")
    except OSError as exc:
        return Outcome(State.UNKNOWN, f"{path}: {exc.strerror or exc}")
    try:
        actual = parse_postconf(_postconf(config, "-n"))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return Outcome(State.UNKNOWN, f"postconf -n failed: {exc}")
    differences = postconf_differences(expected, actual)
    if not differences:
        return Outcome(State.OK, f"postconf -n matches {path} ({len(actual)} settings)")
    return Outcome(
        State.WARN,
        f"{len(differences)} setting(s) differ from what the postfix role wrote: "
        f"{'; '.join(differences[:3])}{' ...' if len(differences) > 3 else ''}. Re-run the "
        "playbook to restore them, or put a wanted change into the role's variables",
        "\n".join(differences),
    )


def _clamd_command(address: str, command: bytes) -> str:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CHECK_TIMEOUT)
        sock.connect(address)
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), CHECK_TIMEOUT)
    with sock:
        sock.settimeout(CHECK_TIMEOUT)
        sock.sendall(command)
        data = b""
        while not data.endswith(b"\0") and len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.rstrip(b"\0\n").decode("ascii", "replace")


def clamd_signature_date(version: str) -> datetime | None:
    """The date of the signatures in clamd's VERSION answer
    ("ClamAV 1.4.6/27500/Wed Nov 25 08:00:00 2026"); None without one."""
    parts = version.split("/")
    if len(parts) < 3:
        return None
    try:
        return datetime.strptime(parts[2].strip(), _CLAMD_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _newest_database(directory: Path) -> tuple[datetime, str] | None:
    try:
        files = [p for p in directory.iterdir() if p.is_file() and p.suffix in (
            ".cvd", ".cld", ".cud", ".ndb", ".hdb", ".hsb", ".ldb", ".ign2", ".yara", ".yar")]
    except OSError:
        return None
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return datetime.fromtimestamp(newest.stat().st_mtime, UTC), newest.name


def check_clamd_signatures(config: Config) -> Outcome:
    settings = config.filters.clamav
    if str(settings.mode) == "off":
        return Outcome(State.UNKNOWN, "the ClamAV filter is off")
    checks = config.self_checks
    version = ""
    with contextlib.suppress(OSError):
        version = _clamd_command(str(settings.address), b"zVERSION\0")
    dated = clamd_signature_date(version)
    source = f"clamd: {version}" if dated else ""
    if dated is None:
        newest = _newest_database(checks.clamd_database_dir)
        if newest is None:
            return Outcome(State.UNKNOWN, "no signature date: clamd's VERSION has none "
                           f"({version or 'no answer'}) and {checks.clamd_database_dir} has no "
                           "databases (self_checks.clamd_database_dir)")
        dated, name = newest
        source = f"{checks.clamd_database_dir / name} changed {dated:%Y-%m-%d %H:%M} UTC"
    age_days = (datetime.now(UTC) - dated).total_seconds() / 86400
    summary = f"signatures {age_days:.1f} day(s) old"
    advice = ("freshclam is not updating them: check `systemctl status clamav-freshclam`, "
              "its log and its access to database.clamav.net")
    if age_days > checks.signatures_fail_days:
        return Outcome(State.FAIL, f"{summary} (> {checks.signatures_fail_days:g}): {advice}",
                       source)
    if age_days > checks.signatures_warn_days:
        return Outcome(State.WARN, f"{summary} (> {checks.signatures_warn_days:g}): {advice}",
                       source)
    return Outcome(State.OK, summary, source)


def certificate_state(path: Path, warn_days: int, now: datetime | None = None
                      ) -> tuple[State, str]:
    from cryptography import x509

    now = now or datetime.now(UTC)
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        return State.FAIL, f"{path}: unreadable ({exc.strerror or exc})"
    except ValueError as exc:
        return State.FAIL, f"{path}: not a PEM certificate ({exc})"
    ends = certificate.not_valid_after_utc
    subject = certificate.subject.rfc4514_string() or "(no subject)"
    days = (ends - now).total_seconds() / 86400
    if certificate.not_valid_before_utc > now:
        return State.FAIL, (f"{path} ({subject}) is valid only from "
                            f"{certificate.not_valid_before_utc:%Y-%m-%d}: check the clock")
    if days < 0:
        return State.FAIL, (f"{path} ({subject}) expired on {ends:%Y-%m-%d}: renew it (the "
                            "webui role makes a new self-signed one when the file is removed)")
    if days < warn_days:
        return State.WARN, (f"{path} ({subject}) expires on {ends:%Y-%m-%d}, in {days:.0f} "
                            "day(s): renew it")
    return State.OK, f"{path} valid until {ends:%Y-%m-%d} ({days:.0f} days)"


def check_certificates(config: Config) -> Outcome:
    """The web UI's HTTPS certificate and the SMTP STARTTLS one, if configured."""
    paths = [p for p in (config.webui.cert_file, config.tls.cert_file) if p is not None]
    if not paths:
        return Outcome(State.UNKNOWN, "no certificate configured (webui.cert_file, "
                       "tls.cert_file)")
    results = [certificate_state(p, config.self_checks.certificate_warn_days)
               for p in dict.fromkeys(paths)]
    worst = max((state for state, _ in results), key=lambda s: s.rank)
    shown = [text for state, text in results if state is worst]
    return Outcome(worst, "; ".join(shown), "\n".join(text for _, text in results))


KEY_DISTRIBUTIONS = ("aiosmtpd", "pydantic", "SQLAlchemy", "dnspython", "pyspf", "dkimpy",
                     "Flask", "cheroot", "cryptography")


def check_versions(config: Config) -> Outcome:
    from importlib import metadata

    def version_of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    postwall = version_of("postwall")
    try:
        postfix = _postconf(config, "-d", "-h", "mail_version").strip() or "unknown"
    except (OSError, RuntimeError, subprocess.SubprocessError):
        postfix = "unknown"
    clamd = "not in use"
    if str(config.filters.clamav.mode) != "off":
        try:
            clamd = _clamd_command(str(config.filters.clamav.address), b"zVERSION\0") or "?"
        except OSError:
            clamd = "no answer"
    detail = ", ".join(f"{name} {version_of(name)}" for name in KEY_DISTRIBUTIONS)
    return Outcome(State.OK, f"Postwall {postwall}, Postfix {postfix}, {clamd}",
                   f"Python {platform.python_version()}; {detail}")


def check_list_files(config: Config) -> Outcome:
    """The `file:` lists, read as the proxy reads them (same owner and mode rules)."""
    from appliance.listfiles import inspect_files
    from appliance.services import list_file_refs

    states = inspect_files(list_file_refs(config))
    if not states:
        return Outcome(State.UNKNOWN, "no list file configured (file:/PATH list entries)")
    unusable = [s for s in states if s.problem is not None]
    bad = [s for s in states if s.problem is None and s.bad_lines]
    entries = sum(s.entries for s in states)
    detail = "; ".join(
        f"{s.path}: {s.problem}" if s.problem is not None
        else f"{s.path}: {s.entries} entries" + (
            f", bad lines: {', '.join(e.removeprefix('line ') for e in s.errors[:5])}"
            + (" ..." if len(s.errors) > 5 else "") if s.bad_lines else "")
        for s in states
    )
    if unusable:
        return Outcome(
            State.FAIL,
            f"{len(unusable)} of {len(states)} list file(s) unusable ({unusable[0].problem}). "
            "A running proxy keeps what it read before, a starting one gets nothing from "
            "them: fix the path, owner or mode",
            detail,
        )
    if bad:
        lines = sum(s.bad_lines for s in bad)
        return Outcome(
            State.WARN,
            f"{lines} bad line(s) skipped in {', '.join(s.path for s in bad)}; the other "
            "lines apply. Fix or remove them (`postwall check-config` names file:line)",
            detail,
        )
    return Outcome(State.OK, f"{len(states)} list file(s), {entries} entries", detail)


CHECKS: tuple[Check, ...] = (  # cheap and local first
    Check("proxy", "Postwall proxy", check_proxy),
    Check("postfix", "Postfix (downstream)", check_postfix),
    Check("clamd", "ClamAV (clamd)", check_clamd),
    Check("dns", "DNS resolver", check_dns),
    Check("disk", "Disk (data directory)", check_disk),
    Check("backup", "Last verified backup", check_backup),
    Check("list_files", "List files", check_list_files),
    Check("postfix_config", "Postfix configuration", check_postfix_config),
    Check("clamd_signatures", "ClamAV signatures", check_clamd_signatures),
    Check("certificates", "Certificates", check_certificates),
    Check("hostname_ptr", "Public host name (PTR)", check_hostname_ptr),
    Check("own_dnsbl", "Own address on DNSBLs", check_own_dnsbl),
    Check("versions", "Versions", check_versions),
)


def run_checks(
    config: Config,
    checks: tuple[Check, ...] = CHECKS,
    timeout: float = CHECK_TIMEOUT + 2.0,
) -> list[CheckResult]:
    """Run every check at once; one that has not finished after `timeout` is reported as
    failed (its thread is left to end on its own socket timeout)."""
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="status")
    try:
        futures = [pool.submit(check.run, config) for check in checks]
        wait(futures, timeout=timeout)
        results = []
        for check, future in zip(checks, futures, strict=True):
            if not future.done():
                outcome = Outcome(State.FAIL, f"no result within {timeout:g}s")
            elif future.exception() is not None:
                error = future.exception()
                outcome = Outcome(State.FAIL, f"check failed: {type(error).__name__}: {error}")
            else:
                outcome = future.result()
            results.append(CheckResult(
                check.name, check.label, outcome.state, outcome.summary, outcome.detail
            ))
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def overall(results: list[CheckResult]) -> State:
    if not results:
        return State.UNKNOWN
    return max((r.state for r in results), key=lambda s: s.rank)
