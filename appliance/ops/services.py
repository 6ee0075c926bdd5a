"""Start, stop and look at the appliance's services behind one small interface.

Two implementations, chosen by `ops.service_manager` (auto: systemd when it is PID 1):

- `SystemdServices`: `systemctl start|stop|restart|is-active` on the units the roles
  install (postwall.service, postwall-webui.service, postfix.service).
- `ProcessServices`: plain processes for hosts and containers without systemd (and the
  tests): `<home>/current/bin/postwall serve --config FILE` started detached in its own
  session, its pid and start time in `data_dir/run/<name>.pid`, stopped by that pid with
  SIGTERM (the proxy drains its sessions) and SIGKILL only after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

from appliance.config.schema import Config
from appliance.rundir import ensure_run_dir

PROXY = "postwall"
WEBUI = "postwall-webui"
POSTFIX = "postfix"
NAMES = (PROXY, WEBUI, POSTFIX)
STOP_TIMEOUT = 45.0  # the unit's TimeoutStopSec: the proxy drains for up to 35 s


class ServiceError(Exception):
    """A service could not be started, stopped or looked at; the message says which."""


class ServiceManager(ABC):
    kind: str

    @abstractmethod
    def installed(self, name: str) -> bool:
        """Whether this host has the service at all (a host without the web UI has none)."""

    @abstractmethod
    def is_running(self, name: str) -> bool: ...

    @abstractmethod
    def start(self, name: str) -> None: ...

    @abstractmethod
    def stop(self, name: str) -> None: ...

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)


class SystemdServices(ServiceManager):
    kind = "systemd"

    def __init__(self, systemctl: str = "systemctl") -> None:
        self.systemctl = systemctl

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - fixed program, unit names from NAMES
            [self.systemctl, *args], capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(
                f"systemctl {' '.join(args)} failed: {detail[-1] if detail else result.returncode}"
            )
        return result

    def installed(self, name: str) -> bool:
        return self._run("cat", f"{name}.service", check=False).returncode == 0

    def is_running(self, name: str) -> bool:
        return self._run("is-active", "--quiet", f"{name}.service", check=False).returncode == 0

    def start(self, name: str) -> None:
        self._run("start", f"{name}.service")

    def stop(self, name: str) -> None:
        self._run("stop", f"{name}.service")

    def restart(self, name: str) -> None:
        self._run("restart", f"{name}.service")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22): with the pid,
    it names one process, so a recycled pid is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has stopped serving
        return None
    return fields[19]


class ProcessServices(ServiceManager):
    kind = "process"

    def __init__(self, config: Config, config_path: Path, home: Path) -> None:
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.home = Path(home)
        self.run_dir = Path(config.data_dir) / "run"

    def _argv(self, name: str) -> list[str]:
        program = str(self.home / "current" / "bin" / "postwall")
        if name == PROXY:
            workers = self.config.ops.serve_workers
            extra = ["--workers", str(workers)] if workers else []
            return [program, "serve", "--config", str(self.config_path), *extra]
        if name == WEBUI:
            return [program, "webui", "serve", "--config", str(self.config_path)]
        raise ServiceError(f"{name}: not managed as a plain process on this host")

    def installed(self, name: str) -> bool:
        if name == PROXY:
            return True
        if name == WEBUI:  # the UI refuses to start without its certificate
            return self.config.webui.cert_file is not None
        return False

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The running service's pid, or None (no pid file, or its process is gone)."""
        try:
            pid_text, _, started = self.pid_file(name).read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        self._reap(pid)
        return pid if _start_time(pid) == started else None

    @staticmethod
    def _reap(pid: int) -> None:
        # A service started by this very process stays a zombie until it is waited for.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    def start(self, name: str) -> None:
        if self.is_running(name):
            return
        argv = self._argv(name)
        if not Path(argv[0]).exists():
            raise ServiceError(f"{name}: {argv[0]} does not exist")
        ensure_run_dir(self.config.data_dir)
        with open(self.log_file(name), "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own release's program
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.config.data_dir, start_new_session=True,
            )
        started = _start_time(proc.pid)
        tmp = self.pid_file(name).with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid} {started}\n")
        os.replace(tmp, self.pid_file(name))

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        pid = self.pid(name)
        if pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            return
        started = _start_time(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(pid)
            if _start_time(pid) != started:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its own session: the workers too
            self._reap(pid)
        self.pid_file(name).unlink(missing_ok=True)


def systemd_is_init() -> bool:
    """What sd_booted() checks: systemd created /run/systemd/system at boot."""
    if not Path("/run/systemd/system").is_dir():
        return False
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def service_manager(config: Config, config_path: Path, home: Path) -> ServiceManager:
    choice = config.ops.service_manager
    if choice == "auto":
        choice = "systemd" if systemd_is_init() else "process"
    if choice == "systemd":
        return SystemdServices()
    return ProcessServices(config, config_path, home)
