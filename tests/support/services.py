"""Real services for the tests, run as plain processes on loopback (no mocks, no systemd).

- `PostfixInstance`: a throwaway Postfix (own config, queue and data directories) listening on
  127.0.0.1:125 (``POSTWALL_TEST_POSTFIX_PORT``) and relaying everything to the recorder.
- `RecordingServer`: the internal mail server stand-in, a separate process running
  ``recording_server.py`` that stores every message it receives.
- `ProxyProcess`: the proxy under test, ``python -m appliance serve --config FILE``.

Every process is stopped by its PID (or its own process group), never by name. Three layers
make sure none outlives the test run: fixture finalizers, an ``atexit`` hook, and a small
reaper process that holds a pipe to the test process and kills whatever is still registered
when that pipe closes — which also happens when pytest itself is killed.

Set ``POSTWALL_TEST_KEEP_DIRS=1`` to keep the throwaway directories for a post-mortem.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORDER_SCRIPT = Path(__file__).resolve().with_name("recording_server.py")
POSTFIX_BIN = Path("/usr/sbin/postfix")
POSTCONF_BIN = Path("/usr/sbin/postconf")
POSTQUEUE_BIN = Path("/usr/sbin/postqueue")
POSTFIX_ETC = Path("/etc/postfix")
LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
KEEP_DIRS = os.environ.get("POSTWALL_TEST_KEEP_DIRS") == "1"

# The recipients for which the test Postfix itself answers (see PostfixInstance): the proxy
# tests use them to check that downstream replies are passed through to the client.
POSTFIX_REJECTS = "postfix-rejects@example.com"
POSTFIX_DEFERS = "postfix-defers@example.com"
DEFAULT_RECIPIENT_ACCESS: dict[str, str] = {
    POSTFIX_REJECTS: "550 5.1.1 rejected by postfix test map",
    POSTFIX_DEFERS: "450 4.2.0 deferred by postfix test map",
}


class ServiceError(RuntimeError):
    """A test service could not be started or stopped; the message says why."""


# --------------------------------------------------------------------------------------
# Processes, by PID
# --------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int | None) -> bool:
    """True if the process exists and is not a zombie (PID 1 here may not reap orphans)."""
    if not pid:
        return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def process_start_time(pid: int) -> str | None:
    """Kernel start time of a process (field 22), to tell a PID from a reused one."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def process_group_members(pgid: int) -> list[int]:
    """Live PIDs whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the child by its PID, SIGKILL it after `timeout` seconds; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def kill_process_group(pgid: int, *, grace: float = 5.0) -> None:
    """SIGTERM every member of a process group we created, then SIGKILL what remains.

    Members are signalled one by one, by PID, after checking their group id.
    """

    def signal_all(signum: int) -> None:
        for pid in process_group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal_all(signal.SIGTERM)
    if not wait_until(lambda: not process_group_members(pgid), grace):
        signal_all(signal.SIGKILL)
        wait_until(lambda: not process_group_members(pgid), 5.0)


class _Reaper:
    """A helper process that kills the registered processes once the test process is gone.

    It reads ``watch PID STARTTIME GROUP`` / ``forget PID`` / ``rmtree PATH`` /
    ``keep PATH`` lines from a pipe; end of file (the test process exited, however it
    exited) makes it stop whatever is still listed, then remove the listed directories.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--reaper"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            assert self._proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()

    def watch(self, pid: int, *, group: bool) -> None:
        start = process_start_time(pid) or "0"
        self._send(f"watch {pid} {start} {int(group)}")

    def forget(self, pid: int) -> None:
        if self._proc is not None:
            self._send(f"forget {pid}")

    def remove_later(self, path: Path) -> None:
        """Remove this throwaway directory if the test process dies without cleaning up."""
        if not KEEP_DIRS:
            self._send(f"rmtree {path}")

    def removed(self, path: Path) -> None:
        if self._proc is not None:
            self._send(f"keep {path}")

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=10)
            self._proc = None


def _reaper_main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: dict[int, tuple[str, bool]] = {}
    directories: set[str] = set()
    for line in sys.stdin:
        verb, _, rest = line.rstrip("\n").partition(" ")
        parts = rest.split()
        if verb == "watch" and len(parts) == 3:
            watched[int(parts[0])] = (parts[1], parts[2] == "1")
        elif verb == "forget" and len(parts) == 1:
            watched.pop(int(parts[0]), None)
        elif verb == "rmtree" and rest:
            directories.add(rest)
        elif verb == "keep":
            directories.discard(rest)
    for pid, (start, group) in watched.items():
        current = process_start_time(pid)
        if current is not None and current != start:
            continue  # the PID now belongs to another process
        if group:
            kill_process_group(pid)
        elif pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_until(lambda p=pid: not pid_alive(p), 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


_REAPER = _Reaper()


class _Stoppable(Protocol):
    def stop(self) -> Any: ...


_LIVE: dict[int, _Stoppable] = {}


def _register(service: _Stoppable) -> None:
    _LIVE[id(service)] = service


def _unregister(service: _Stoppable) -> None:
    _LIVE.pop(id(service), None)


@atexit.register
def stop_all_services() -> None:
    """Stop every service still running (fixture finalizers normally did it already)."""
    for service in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            service.stop()
    _REAPER.close()


# --------------------------------------------------------------------------------------
# Ports and SMTP greetings
# --------------------------------------------------------------------------------------

_HANDED_OUT: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now, never handed out twice in this test run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise ServiceError("could not find a free port")


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on host:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def listener_hint(port: int) -> str:
    """'\nlistening: <ss line>' naming the process that listens on `port`, if ss knows."""
    ss = shutil.which("ss", path=SAFE_ENV["PATH"])
    if ss is None:
        return ""
    result = subprocess.run(
        [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    lines = [" ".join(line.split()) for line in result.stdout.splitlines() if line.strip()]
    return "".join(f"\nlistening: {line}" for line in lines)


def port_refuses(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port is refused."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def smtp_greeting(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The server's complete greeting (e.g. '220 name ESMTP'), or None if there is none.

    Says QUIT politely afterwards so the server logs an orderly session.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
                lines = buf.split(b"\r\n")
                complete = lines[:-1]
                if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
                    break
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
                sock.recv(4096)
            return buf.decode("utf-8", "replace").strip()
    except OSError:
        return None


def wait_for_smtp(
    host: str,
    port: int,
    *,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    what: str = "server",
    diagnostics: Callable[[], str] | None = None,
    any_greeting: bool = False,
) -> str:
    """Wait until host:port answers with a 220 greeting (any SMTP greeting with
    `any_greeting`: a proxy that refuses the test client with 554 is serving); return it.

    `alive` is polled too, so a process that died at start-up fails at once instead of
    after the whole timeout. The failure message includes `diagnostics()`.
    """
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        greeting = smtp_greeting(host, port, timeout=min(2.0, timeout))
        if greeting is not None and (
            greeting.startswith("220") or (any_greeting and greeting[:1] in "2345")
        ):
            return greeting
        last = greeting or last
        died = alive is not None and not alive()
        if died or time.monotonic() >= deadline:
            reason = "exited during start-up" if died else f"gave no 220 within {timeout:g}s"
            detail = f"\nlast greeting: {last!r}" if last else ""
            extra = f"\n{diagnostics()}" if diagnostics else ""
            raise ServiceError(f"{what} on {host}:{port} {reason}{detail}{extra}")
        time.sleep(0.05)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _make_base_dir(prefix: str) -> Path:
    # Not pytest's tmp_path: its parents are mode 0700, and Postfix's daemons run as the
    # postfix user and must reach their queue directory.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    _REAPER.remove_later(base)
    return base


def _remove_base_dir(base: Path) -> None:
    if not KEEP_DIRS:
        shutil.rmtree(base, ignore_errors=True)
        _REAPER.removed(base)



class ThrowawayService:
    """A service a test starts, stops for a while, and throws away with its base
    directory. Subclasses set `base_dir` and `_own_base`, and define `start` and `stop`."""

    base_dir: Path
    _own_base: bool

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    @contextlib.contextmanager
    def stopped(self) -> Iterator[Any]:
        """Down inside the block, running again after it."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def cleanup(self) -> None:
        """Stop, and remove the throwaway directory (unless POSTWALL_TEST_KEEP_DIRS=1)."""
        self.stop()
        if self._own_base:
            _remove_base_dir(self.base_dir)


class LocalDaemon(ThrowawayService):
    """What every daemon the tests run as a plain process shares: its Popen, stop by PID
    (SIGTERM, then SIGKILL), a throwaway base directory removed by `cleanup`. Subclasses
    set `_proc`, `base_dir` and `_own_base`, and define `start`."""

    _proc: subprocess.Popen[bytes] | None
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        proc = self._proc
        if proc is None:
            return
        terminate(proc, timeout=self.stop_timeout if timeout is None else timeout)
        _REAPER.forget(proc.pid)
        _unregister(self)
        self._proc = None
        self._after_stop(proc.pid)

    def _after_stop(self, pid: int) -> None:
        """What a stopped daemon leaves behind and the tests must not see."""

def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `override` merged into `base`; nested dicts merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------------------
# Postfix
# --------------------------------------------------------------------------------------


def postfix_supports(parameter: str) -> bool:
    """True if this Postfix knows the main.cf parameter (`postconf -d NAME` succeeds)."""
    result = subprocess.run(
        [str(POSTCONF_BIN), "-d", parameter],
        capture_output=True,
        text=True,
        env=SAFE_ENV,
        check=False,
    )
    return result.returncode == 0 and result.stdout.startswith(f"{parameter} =")


class PostfixInstance(ThrowawayService):
    """A private Postfix on 127.0.0.1:PORT relaying every message to `relay_host:relay_port`.

    Port: `port`, else ``POSTWALL_TEST_POSTFIX_PORT``, else 125. Layout under `base_dir`:
    ``etc/`` (config_dir: main.cf, master.cf, maps, maillog), ``spool/`` (queue_directory),
    ``lib/`` (data_directory, owned by postfix).
    """

    def __init__(
        self,
        *,
        relay_port: int,
        relay_host: str = LOOPBACK,
        port: int | None = None,
        base_dir: Path | None = None,
        message_size_limit: int = 30 * MiB,
        recipient_access: Mapping[str, str] | None = None,
        main_cf: Mapping[str, str] | None = None,
    ) -> None:
        if port is None:
            port = int(os.environ.get("POSTWALL_TEST_POSTFIX_PORT", "125"))
        self.host = LOOPBACK
        self.port = port
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.message_size_limit = message_size_limit
        self.recipient_access = dict(
            DEFAULT_RECIPIENT_ACCESS if recipient_access is None else recipient_access
        )
        self.extra_main_cf = dict(main_cf or {})
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-postfix-") if base_dir is None else base_dir
        self.config_dir = self.base_dir / "etc"
        self.queue_dir = self.base_dir / "spool"
        self.data_dir = self.base_dir / "lib"
        self.maillog_path = self.config_dir / "maillog"
        self._pid: int | None = None
        self._configured = False

    # -- configuration ---------------------------------------------------------------

    def main_cf_settings(self) -> dict[str, str]:
        etc = self.config_dir
        recipient_access = f"texthash:{etc}/recipient_access"
        settings = {
            "compatibility_level": "3.6",
            "myhostname": "postfix.postwall.test",
            "mydomain": "postwall.test",
            "myorigin": "$myhostname",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": str(POSTFIX_ETC),
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_client_restrictions": "permit_mynetworks, reject",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access {recipient_access}",
            "transport_maps": f"texthash:{etc}/transport",
            "message_size_limit": str(self.message_size_limit),
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.base_dir),
            "smtpd_banner": "$myhostname ESMTP Postfix (postwall test)",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_peername_lookup": "no",
            # Fast queue turnaround for deferred mail in tests.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "in_flow_delay": "0",
            # Tests provoke errors on purpose: no tarpitting.
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "1000",
            # Pass messages through unchanged apart from the Received header: no header
            # rewriting or added Message-ID/Date for loopback clients, no 8bit->QP
            # conversion, no folding of long lines on the way to the internal server.
            "local_header_rewrite_clients": "",
            "disable_mime_output_conversion": "yes",
            "smtp_line_length_limit": "0",
        }
        if postfix_supports("smtpd_forbid_bare_newline"):
            # Debian 12's 3.7.11 has the SMTP smuggling fix backported. The default
            # exclusion ($mynetworks) would exempt the proxy on loopback; apply it to all.
            settings["smtpd_forbid_bare_newline"] = "normalize"
            settings["smtpd_forbid_bare_newline_exclusions"] = ""
        settings.update(self.extra_main_cf)
        return settings

    def _write_maps(self) -> None:
        transport = f"*\tsmtp:[{self.relay_host}]:{self.relay_port}\n"
        (self.config_dir / "transport").write_text(transport)
        access = "".join(f"{k}\t{v}\n" for k, v in self.recipient_access.items())
        (self.config_dir / "recipient_access").write_text(access)

    def configure(self) -> None:
        """Write the config directory; start() calls it the first time."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        self.data_dir.chmod(0o700)
        shutil.copy2(POSTFIX_ETC / "dynamicmaps.cf", self.config_dir / "dynamicmaps.cf")
        if (POSTFIX_ETC / "dynamicmaps.cf.d").is_dir():
            shutil.copytree(
                POSTFIX_ETC / "dynamicmaps.cf.d",
                self.config_dir / "dynamicmaps.cf.d",
                dirs_exist_ok=True,
            )
        master = []
        replaced = False
        for line in (POSTFIX_ETC / "master.cf").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "smtp" and fields[1] == "inet":
                line = f"{self.host}:{self.port} inet n - n - - smtpd"
                replaced = True
            master.append(line)
        if not replaced:
            raise ServiceError(f"no 'smtp inet' service in {POSTFIX_ETC}/master.cf")
        (self.config_dir / "master.cf").write_text("\n".join(master) + "\n")
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf_settings().items())
        (self.config_dir / "main.cf").write_text(
            "# Written by tests/support/services.py for one test run.\n" + main
        )
        self._write_maps()
        self.postconf("-F", "*/*/chroot = n")
        self._configured = True

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c CONFIG_DIR ARGS``; return its output."""
        return self._run([str(POSTCONF_BIN), "-c", str(self.config_dir), *args])

    def _run(self, argv: list[str], *, timeout: float = 60.0) -> str:
        result = subprocess.run(
            argv, capture_output=True, text=True, env=SAFE_ENV, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{' '.join(argv)} failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\nmaillog:\n{self.maillog_tail()}"
            )
        return result.stdout + result.stderr

    def set_relay(self, host: str, port: int) -> None:
        """Send all mail to another next hop from now on (reloads a running Postfix)."""
        self.relay_host, self.relay_port = host, port
        self._write_maps()
        if self.is_running:
            self.reload()

    def set_recipient_access(self, mapping: Mapping[str, str]) -> None:
        """Replace the recipient access map (reloads a running Postfix)."""
        self.recipient_access = dict(mapping)
        self._write_maps()
        if self.is_running:
            self.reload()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the master process while it runs."""
        return self._pid if pid_alive(self._pid) else None

    @property
    def is_running(self) -> bool:
        return pid_alive(self._pid)

    def _read_master_pid(self) -> int | None:
        text = _read_text(self.queue_dir / "pid" / "master.pid").strip()
        return int(text) if text.isdigit() else None

    def start(self, timeout: float = 30.0) -> None:
        """Start Postfix and wait until its smtpd answers 220."""
        if self.is_running:
            return
        if not POSTFIX_BIN.exists():
            raise ServiceError(f"{POSTFIX_BIN} is missing: run scripts/install-test-deps")
        if not self._configured:
            self.configure()
        stale = self._read_master_pid()
        if stale and pid_alive(stale):
            raise ServiceError(f"a Postfix master (PID {stale}) already runs on {self.queue_dir}")
        if port_in_use(self.host, self.port):
            raise ServiceError(
                f"{self.host}:{self.port} is already in use, so the test Postfix cannot listen "
                "there. Another test run or a system Postfix? Stop it (by PID), or choose "
                f"another port with POSTWALL_TEST_POSTFIX_PORT.{listener_hint(self.port)}"
            )
        self._run([str(POSTFIX_BIN), "-c", str(self.config_dir), "start"], timeout=timeout)
        pid = self._read_master_pid()
        if pid is None or not pid_alive(pid):
            raise ServiceError(f"Postfix did not start:\n{self.maillog_tail()}")
        self._pid = pid
        _REAPER.watch(pid, group=True)
        _register(self)
        wait_for_smtp(
            self.host,
            self.port,
            timeout=timeout,
            alive=lambda: pid_alive(pid),
            what="Postfix",
            diagnostics=lambda: "maillog:\n" + self.maillog_tail(),
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the master (SIGTERM; it stops its children), then any straggler, by PID."""
        pid = self._pid
        if pid is None:
            return
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_until(lambda: not pid_alive(pid), timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not pid_alive(pid), 5.0)
        # The master is its own process group leader; its children share the group.
        kill_process_group(pid, grace=timeout)
        self._pid = None
        _REAPER.forget(pid)
        _unregister(self)
        self._remove_half_received()
        if not wait_until(lambda: port_refuses(self.host, self.port), 5.0):
            raise ServiceError(f"{self.host}:{self.port} still accepts after Postfix stopped")

    def _remove_half_received(self) -> None:
        """A cleanup process killed mid-message leaves an incomplete file in incoming/
        (a temporary <inode>.<pid>, or an empty file already named by its queue id).
        Postfix marks a finished queue file executable by its owner, so one without that
        bit was never acknowledged: it would only keep `queue_ids` non-empty forever, and
        an odd name makes the next `postfix start` fail (postsuper cannot log to our
        maillog). Postfix itself discards such files."""
        incoming = self.queue_dir / "incoming"
        if not incoming.is_dir():
            return
        for path in incoming.rglob("*"):
            if path.is_file() and not path.stat().st_mode & stat.S_IXUSR:
                path.unlink(missing_ok=True)

    def reload(self) -> None:
        """``postfix reload``: re-read main.cf/master.cf and the maps."""
        self._run([str(POSTFIX_BIN), "-c", str(self.config_dir), "reload"])

    # -- observation -----------------------------------------------------------------

    @property
    def maillog(self) -> str:
        """Everything Postfix logged so far."""
        return _read_text(self.maillog_path)

    def maillog_tail(self, lines: int = 40) -> str:
        return _tail(self.maillog, lines)

    def queue_ids(self) -> list[str]:
        """Queue files waiting for delivery (maildrop, incoming, active, deferred)."""
        names = []
        for sub in ("maildrop", "incoming", "active", "deferred"):
            directory = self.queue_dir / sub
            if directory.is_dir():
                names += [p.name for p in directory.rglob("*") if p.is_file()]
        return names

    def wait_queue_empty(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message has left; False on timeout."""
        return wait_until(lambda: not self.queue_ids(), timeout, interval=0.1)

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now."""
        self._run([str(POSTQUEUE_BIN), "-c", str(self.config_dir), "-f"])


# --------------------------------------------------------------------------------------
# Recording server (the internal mail server)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedMessage:
    """One message as the internal mail server received it."""

    seq: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    helo: str | None
    peer: tuple[str, int]
    received_at: float
    content: bytes = field(repr=False)
    path: Path = field(repr=False)

    @cached_property
    def _split(self) -> tuple[bytes, bytes]:
        for separator in (b"\r\n\r\n", b"\n\n"):
            head, sep, body = self.content.partition(separator)
            if sep:
                return head + separator[: len(separator) // 2], body
        return self.content, b""

    @property
    def header_bytes(self) -> bytes:
        """The header section, up to and including the last header's line end."""
        return self._split[0]

    @property
    def body(self) -> bytes:
        """The octets after the empty line that ends the headers."""
        return self._split[1]

    @cached_property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def headers(self, name: str) -> list[str]:
        """All values of header `name`, top first (Postfix prepends its Received)."""
        return [str(v) for v in self.message.get_all(name, [])]

    def header(self, name: str) -> str | None:
        """The first (topmost) value of header `name`, or None."""
        values = self.headers(name)
        return values[0] if values else None

    def matches(
        self,
        substring: bytes | str | None = None,
        *,
        header: str | None = None,
        value: str | None = None,
    ) -> bool:
        if substring is not None:
            needle = substring.encode() if isinstance(substring, str) else substring
            if needle not in self.content:
                return False
        if header is not None:
            values = self.headers(header)
            if not values or (value is not None and not any(value in v for v in values)):
                return False
        return True


class RecordingServer(LocalDaemon):
    """The recording SMTP server process and the messages it stored.

    Port: `port`, else ``POSTWALL_TEST_RECORDER_PORT``, else a free one chosen at start
    (kept across restarts, since Postfix's transport map points at it).
    """

    stop_timeout = 10.0

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: Path | None = None,
        hostname: str = "recorder.postwall.test",
        mailboxes: Iterable[str] | None = None,
        tempfail_rcpt: bool = False,
    ) -> None:
        # mailboxes: the only addresses RCPT/VRFY accept (others 550 5.1.1), as an internal
        # mail server answers a recipient callout; tempfail_rcpt: every RCPT gets 451.
        self.mailboxes = tuple(mailboxes) if mailboxes is not None else None
        self.tempfail_rcpt = tempfail_rcpt
        if port is None and os.environ.get("POSTWALL_TEST_RECORDER_PORT"):
            port = int(os.environ["POSTWALL_TEST_RECORDER_PORT"])
        self.host = LOOPBACK
        self.port = port or 0
        self.hostname = hostname
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-recorder-") if base_dir is None else base_dir
        self.directory = self.base_dir / "messages"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.base_dir / "stdout.log"
        self.stderr_path = self.base_dir / "stderr.log"
        self.probe_log_path = self.base_dir / "probes.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def probes(self) -> list[tuple[str, str, int]]:
        """(command, address, reply code) of every RCPT and VRFY received, in order."""
        out = []
        for line in _read_text(self.probe_log_path).splitlines():
            command, address, code = line.rsplit(" ", 2)
            out.append((command, address.split(" ", 1)[-1], int(code)))
        return out

    def start(self, timeout: float = 15.0) -> None:
        if self.is_running:
            return
        if self.port and port_in_use(self.host, self.port):
            raise ServiceError(f"recorder port {self.host}:{self.port} is already in use")
        argv = [
            sys.executable,
            str(RECORDER_SCRIPT),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--hostname",
            self.hostname,
            "--parent-pid",
            str(os.getpid()),
            "--probe-log",
            str(self.probe_log_path),
        ]
        argv += [f"--mailbox={mailbox}" for mailbox in self.mailboxes or ()]
        if self.tempfail_rcpt:
            argv.append("--tempfail-rcpt")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        proc = self._proc
        _REAPER.watch(proc.pid, group=True)
        _register(self)

        def ready_port() -> int | None:
            for line in _read_text(self.stdout_path).splitlines():
                if line.startswith("READY "):
                    return int(line.split()[1])
            return None

        if not wait_until(lambda: ready_port() is not None or proc.poll() is not None, timeout):
            self.stop()
            raise ServiceError(f"recorder not ready within {timeout:g}s:\n{self.stderr_text()}")
        port = ready_port()
        if port is None:
            self.stop()
            raise ServiceError(f"recorder exited at start-up:\n{self.stderr_text()}")
        self.port = port
        wait_for_smtp(
            self.host,
            port,
            timeout=timeout,
            alive=lambda: proc.poll() is None,
            what="recorder",
            diagnostics=self.stderr_text,
        )

    def _after_stop(self, pid: int) -> None:
        kill_process_group(pid, grace=1.0)

    def stderr_text(self) -> str:
        return _read_text(self.stderr_path)

    # -- the recorded messages ---------------------------------------------------------

    def messages(self) -> list[RecordedMessage]:
        """Every message recorded since the last clear(), oldest first."""
        found = []
        for meta_path in sorted(self.directory.glob("[0-9]*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                content = meta_path.with_suffix(".eml").read_bytes()
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # removed by clear() meanwhile
            found.append(
                RecordedMessage(
                    seq=int(meta["seq"]),
                    mail_from=meta["mail_from"],
                    rcpt_tos=tuple(meta["rcpt_tos"]),
                    mail_options=tuple(meta["mail_options"]),
                    rcpt_options=tuple(meta["rcpt_options"]),
                    helo=meta.get("helo"),
                    peer=(meta["peer"][0], int(meta["peer"][1])),
                    received_at=float(meta["received_at"]),
                    content=content,
                    path=meta_path.with_suffix(".eml"),
                )
            )
        return sorted(found, key=lambda m: m.seq)

    def clear(self) -> None:
        """Forget every recorded message."""
        for path in self.directory.iterdir():
            if path.suffix in (".json", ".eml", ".tmp"):
                path.unlink(missing_ok=True)

    def find(
        self,
        substring: bytes | str | None = None,
        *,
        header: str | None = None,
        value: str | None = None,
    ) -> list[RecordedMessage]:
        """Messages containing `substring`, and/or having `header` (containing `value`)."""
        return [m for m in self.messages() if m.matches(substring, header=header, value=value)]

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[RecordedMessage]:
        """Wait until at least `count` messages are recorded; return all of them."""
        if wait_until(lambda: len(self.messages()) >= count, timeout, interval=0.05):
            return self.messages()
        raise AssertionError(
            f"expected {count} message(s) at the recorder within {timeout:g}s, "
            f"got {len(self.messages())}: {self._summary()}"
        )

    def wait_for_match(
        self,
        substring: bytes | str | None = None,
        *,
        header: str | None = None,
        value: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[RecordedMessage]:
        """Wait until `count` messages match (see find()); return the matching ones."""
        if wait_until(
            lambda: len(self.find(substring, header=header, value=value)) >= count,
            timeout,
            interval=0.05,
        ):
            return self.find(substring, header=header, value=value)
        raise AssertionError(
            f"expected {count} matching message(s) at the recorder within {timeout:g}s "
            f"(substring={substring!r}, header={header!r}, value={value!r}); "
            f"recorded: {self._summary()}"
        )

    def assert_no_messages(self, within: float = 1.0) -> None:
        """Fail if any message is (or arrives within `within` seconds) at the recorder."""
        if wait_until(lambda: bool(self.messages()), within, interval=0.05):
            raise AssertionError(f"expected no message at the recorder: {self._summary()}")

    def _summary(self) -> str:
        items = [
            f"#{m.seq} from=<{m.mail_from}> to={list(m.rcpt_tos)} subject={m.header('Subject')!r}"
            for m in self.messages()
        ]
        return "[" + "; ".join(items) + "]"


# --------------------------------------------------------------------------------------
# The proxy under test
# --------------------------------------------------------------------------------------


def _hostport(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    return host.strip("[]"), int(port)


class ProxyProcess:
    """``python -m appliance serve --config FILE --workers N`` with a generated config.

    The config is `overrides` deep-merged over defaults that point every listener at a free
    loopback port and the downstream at the test Postfix.
    """

    def __init__(
        self,
        *,
        downstream_port: int,
        overrides: Mapping[str, Any] | None = None,
        workers: int = 1,
        base_dir: Path | None = None,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-proxy-") if base_dir is None else base_dir
        self.workers = workers
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        defaults: dict[str, Any] = {
            "listen": {
                "inbound": f"{LOOPBACK}:{free_port()}",
                "relay": f"{LOOPBACK}:{free_port()}",
            },
            "relay_networks": ["127.0.0.0/8"],
            "downstream": {"host": LOOPBACK, "port": downstream_port, "timeout": 10},
            "local_domains": ["example.com"],
            "data_dir": str(self.base_dir / "data"),
            "metrics": {"listen": f"{LOOPBACK}:{free_port()}"},
            "smtp": {"hostname": "postwall.test"},
        }
        self.config: dict[str, Any] = deep_merge(defaults, overrides or {})
        self.config_path = self.base_dir / "postwall.yml"
        self.stdout_path = self.base_dir / "stdout.log"
        self.stderr_path = self.base_dir / "stderr.log"
        self._write_config()
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        import yaml  # the project's own dependency; imported late so the module loads without

        tmp = self.config_path.with_name(f".{self.config_path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        os.replace(tmp, self.config_path)

    def update_config(self, overrides: Mapping[str, Any]) -> None:
        """Merge `overrides` into the config file (atomically); signal a reload yourself."""
        self.config = deep_merge(self.config, overrides)
        self._write_config()

    # -- addresses ---------------------------------------------------------------------

    @property
    def inbound(self) -> tuple[str, int]:
        address = _hostport(self.config["listen"]["inbound"])
        assert address is not None
        return address

    @property
    def relay(self) -> tuple[str, int] | None:
        return _hostport(self.config["listen"].get("relay"))

    @property
    def metrics(self) -> tuple[str, int] | None:
        return _hostport((self.config.get("metrics") or {}).get("listen"))

    @property
    def data_dir(self) -> Path:
        return Path(self.config["data_dir"])

    # -- lifecycle -------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "appliance",
            "serve",
            "--config",
            str(self.config_path),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        """Start the proxy and wait until its inbound listener answers 220."""
        if self.is_running:
            return self
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.base_dir,
                env=env,
                start_new_session=True,
            )
        proc = self._proc
        _REAPER.watch(proc.pid, group=True)
        _register(self)
        host, port = self.inbound
        try:
            wait_for_smtp(
                host,
                port,
                timeout=timeout,
                alive=lambda: proc.poll() is None,
                what=f"proxy (PID {proc.pid}, {' '.join(self.argv)})",
                diagnostics=self._diagnostics,
                any_greeting=True,
            )
        except ServiceError:
            self.stop()
            raise
        return self

    def _diagnostics(self) -> str:
        code = self.returncode
        status = f"exit code {code}" if code is not None else "still running"
        return f"{status}; stderr:\n{_tail(self.stderr_text(), 60)}"

    def send_signal(self, signum: int) -> None:
        if not self.is_running or self._proc is None:
            raise ServiceError("the proxy is not running")
        self._proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        terminate(proc, timeout=timeout)
        kill_process_group(proc.pid, grace=2.0)  # workers, if any outlived the main process
        _REAPER.forget(proc.pid)
        _unregister(self)
        return proc.returncode

    def cleanup(self) -> None:
        self.stop()
        if self._own_base:
            _remove_base_dir(self.base_dir)

    def stderr_text(self) -> str:
        return _read_text(self.stderr_path)

    def stdout_text(self) -> str:
        return _read_text(self.stdout_path)


if __name__ == "__main__" and sys.argv[1:] == ["--reaper"]:
    sys.exit(_reaper_main())


@contextlib.contextmanager
def postfix_settings(postfix: PostfixInstance, **settings: str) -> Iterator[None]:
    """main.cf `settings` for the block (postconf -e + reload), the old values after."""
    old = {name: postfix.postconf("-h", name).strip() for name in settings}

    def apply(values: dict[str, str]) -> None:
        reloads = postfix.maillog.count("reload -- version")
        postfix.postconf("-e", *(f"{k}={v}" for k, v in values.items()))
        postfix.reload()
        # `postfix reload` only signals the master; wait until it has re-read main.cf and
        # its idle smtpd processes (still on the old settings) have gone.
        assert wait_until(lambda: postfix.maillog.count("reload -- version") > reloads, 10)
        time.sleep(0.5)

    apply(settings)
    try:
        yield
    finally:
        apply(old)
