"""Health checks of the appliance, returned as results; renderers live elsewhere.

`postwall status` prints them and the web UI's dashboard shows them as green/amber/red
tiles, from this one code path. Every check has its own short timeout and all of them run
at once, so one dead service (a resolver that never answers) cannot hang the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
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
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CHECK_TIMEOUT)
            sock.connect(address)
        else:
            host, _, port = address.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), CHECK_TIMEOUT)
        with sock:
            sock.settimeout(CHECK_TIMEOUT)
            sock.sendall(b"zPING\0")
            reply = sock.recv(64)
    except TimeoutError:
        return Outcome(State.FAIL, f"{address}: no answer within {CHECK_TIMEOUT:g}s")
    except OSError as exc:
        return Outcome(State.FAIL, f"{address}: {exc.strerror or exc}")
    if reply.rstrip(b"\0\n") != b"PONG":
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


CHECKS: tuple[Check, ...] = (  # cheap and local first
    Check("proxy", "Postwall proxy", check_proxy),
    Check("postfix", "Postfix (downstream)", check_postfix),
    Check("clamd", "ClamAV (clamd)", check_clamd),
    Check("dns", "DNS resolver", check_dns),
    Check("disk", "Disk (data directory)", check_disk),
    Check("backup", "Last verified backup", check_backup),
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
