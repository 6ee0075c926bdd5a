"""The mail-safe maintenance window that upgrades and restores change files in.

    with MaintenanceWindow(config, reason="upgrade") as window:
        ...  # the proxy and the web UI are stopped; change releases, files, databases

On entry:
0. the maintenance flag (appliance/ops/flag.py) is raised, so that a worker restarted
   while the window is open comes up in maintenance as well;
1. every proxy worker is told (control socket, `maintenance on`) to refuse new sessions
   with `421 4.3.2`, to answer `451 4.3.2` to a message whose end of data arrives, and to
   close every other session with 421 once its message in flight (if any) is answered:
   nothing the proxy accepted is lost and nothing is half-accepted;
2. the holding responder (appliance/ops/holder.py) takes over the proxy's listening
   sockets and answers `421 4.3.2 <host> Service temporarily unavailable, try again
   later`, so that senders queue and retry while the proxy is down;
3. once the sessions are gone (or `ops.drain_timeout` passed), the services are stopped.

On a clean exit: the flag is lowered, the services start again (the proxy joins the held
sockets through SO_REUSEPORT), the holding responder answers what is queued and closes as
soon as a new worker serves, and the health gate runs; `HealthGateFailed` if it fails, with the
services left as they are (the caller rolls back, in a new window).
On an exception inside the block: the services are started as they were and the
exception goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from appliance.config.schema import Config
from appliance.control import ControlClient
from appliance.ops.flag import lower_flag, raise_flag
from appliance.ops.health import GateResult, HealthGateFailed, run_gate
from appliance.ops.holder import HoldingResponder
from appliance.ops.services import PROXY, WEBUI, ServiceManager, service_manager

log = logging.getLogger("postwall.ops.maintenance")

DEFAULT_HOME = Path("/opt/postwall")
POLL = 0.05

__all__ = ["HealthGateFailed", "MaintenanceError", "MaintenanceWindow"]


class MaintenanceError(Exception):
    """The window could not be opened (e.g. the ports cannot be held); nothing changed."""


@dataclass
class WindowReport:
    reason: str
    opened_at: float = 0.0
    services_stopped_at: float = 0.0
    services_started_at: float = 0.0
    held_until: float = 0.0
    closed_at: float = 0.0
    answered_by_holder: int = 0
    stopped: list[str] = field(default_factory=list)
    gate: GateResult | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.closed_at - self.opened_at)


class MaintenanceWindow:
    def __init__(
        self, config: Config, reason: str, *, config_path: Path | None = None,
        home: Path = DEFAULT_HOME, services: ServiceManager | None = None,
        progress: Callable[[str], None] | None = None, gate: bool = True,
    ) -> None:
        if reason not in ("restore", "upgrade", "rollback"):
            raise ValueError(f"unknown maintenance reason {reason!r}")
        self.config = config
        self.config_path = config_path
        self.reason = reason
        self.home = Path(home)
        if services is None:
            if config_path is None:
                raise ValueError("config_path is needed to choose the service manager")
            services = service_manager(config, config_path, self.home)
        self.services = services
        self.progress = progress or (lambda line: log.info("%s", line))
        self.gate = gate
        self.control = ControlClient(config.data_dir)
        self.holder: HoldingResponder | None = None
        self.report = WindowReport(reason)
        self._was_running: dict[str, bool] = {}

    # -- entering ---------------------------------------------------------------------

    def __enter__(self) -> MaintenanceWindow:
        report = self.report
        report.opened_at = time.monotonic()
        managed = [name for name in (WEBUI, PROXY) if self.services.installed(name)]
        self._was_running = {name: self.services.is_running(name) for name in managed}
        raise_flag(self.config.data_dir, self.reason)
        reached = self.control.set_maintenance(True)
        self.progress(f"maintenance ({self.reason}): {len(reached)} proxy worker(s) now "
                      "answer 421/451")
        try:
            self.holder = HoldingResponder.for_config(self.config)
        except OSError as exc:
            lower_flag(self.config.data_dir)
            self.control.set_maintenance(False)
            raise MaintenanceError(f"cannot hold the SMTP ports: {exc}") from exc
        self.holder.start()
        self._wait_for_sessions()
        try:
            for name in managed:  # the UI first: it writes the same database
                if self._was_running[name]:
                    self.services.stop(name)
                    report.stopped.append(name)
        except Exception:
            lower_flag(self.config.data_dir)
            self._start_services(list(self._was_running))
            self._release_holder()
            self.control.set_maintenance(False)
            raise
        report.services_stopped_at = time.monotonic()
        stopped = ", ".join(report.stopped) or "nothing"
        self.progress(f"maintenance ({self.reason}): stopped {stopped}; "
                      f"{', '.join(self.holder.addresses)} answer 421")
        return self

    def _wait_for_sessions(self) -> None:
        deadline = time.monotonic() + self.config.ops.drain_timeout
        while time.monotonic() < deadline:
            workers = self.control.workers()
            if sum(w.sessions for w in workers) == 0:
                return
            time.sleep(POLL)
        log.warning("sessions still open after %.0fs; stopping anyway (they get 421)",
                    self.config.ops.drain_timeout)

    # -- leaving ----------------------------------------------------------------------

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        report = self.report
        wanted = [name for name, running in self._was_running.items() if running]
        if PROXY not in wanted and PROXY in self._was_running:
            wanted.append(PROXY)  # a gateway leaves maintenance serving mail
        # Before anything starts: the new workers must not come up in maintenance.
        lower_flag(self.config.data_dir)
        if exc_type is not None:
            try:
                self._start_services(wanted)
            finally:
                self._release_holder()
                report.closed_at = time.monotonic()
            return  # the exception goes on
        try:
            self._start_services(wanted, strict=True)
        finally:
            self._release_holder()
        report.closed_at = time.monotonic()
        if self.gate:
            report.gate = run_gate(
                self._configuration_now(), webui=WEBUI in wanted, progress=self.progress
            )
            self.progress(f"health gate passed in {report.gate.seconds:.1f}s")

    def _configuration_now(self) -> Config:
        """What the services started with: a restore may have changed the listeners, the
        local domains or the web UI, and the gate must ask the appliance as it now is."""
        if self.config_path is None:
            return self.config
        from appliance.config import loader

        try:
            return loader.load(Path(self.config_path)).config
        except loader.ConfigError as exc:
            raise HealthGateFailed(f"the configuration does not load: {exc}") from exc

    def _start_services(self, names: list[str], *, strict: bool = False) -> None:
        if self.holder is not None and os.geteuid() == 0:
            # Sockets bound by root here would keep a proxy of another user off the port.
            self.holder.release_own_sockets()
        errors = []
        for name in [n for n in (PROXY, WEBUI) if n in names]:
            try:
                self.services.start(name)
            except Exception as exc:
                errors.append(f"{name}: {exc}")
                log.error("could not start %s: %s", name, exc)
        self.report.services_started_at = time.monotonic()
        if PROXY in names:
            self._wait_for_proxy()
        if errors and strict:
            raise HealthGateFailed("; ".join(errors))

    def _wait_for_proxy(self) -> None:
        """Until a new worker serves (its control socket answers after its listeners are
        bound), the holding responder keeps answering."""
        deadline = time.monotonic() + self.config.ops.health_timeout
        while time.monotonic() < deadline:
            if self.control.workers():
                return
            if not self.services.is_running(PROXY):
                return  # it died: the gate will say so
            time.sleep(POLL)

    def _release_holder(self) -> None:
        # A proxy that was not stopped (not run by the service manager) serves again.
        self.control.set_maintenance(False)
        if self.holder is None:
            return
        self.holder.close()
        self.report.answered_by_holder = self.holder.answered
        self.report.held_until = time.monotonic()
        self.holder = None
