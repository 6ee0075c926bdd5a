"""The maintenance window against a real proxy (run by the plain-process service manager)
and the test Postfix: 421 for new sessions, 451 for a message in flight, a holding
responder while the proxy is down, mail flowing again afterwards."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from appliance.config import loader
from appliance.control import ControlClient
from appliance.ops.flag import flag_path, lower_flag, raise_flag
from appliance.ops.maintenance import MaintenanceWindow
from appliance.ops.services import PROXY, ProcessServices
from tests.support.releases import PortWatch, SenderLoop
from tests.support.services import wait_for_smtp, wait_until

REPO = Path(__file__).resolve().parents[2]
OPS = {"ops": {"service_manager": "process", "serve_workers": 1, "health_timeout": 30,
               "drain_timeout": 10}}


class Raw:
    """A hand-driven SMTP client: the test decides when each line is sent."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=15)
        self.buffer = b""

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return "\n".join(lines) or "(closed)"
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def managed_proxy(proxy_factory, tmp_path):
    proxy = proxy_factory(OPS, start=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "current").symlink_to(REPO / ".venv")  # current/bin/postwall: this work tree
    config = loader.load(proxy.config_path).config
    services = ProcessServices(config, proxy.config_path, home)
    services.start(PROXY)
    host, port = proxy.inbound
    wait_for_smtp(host, port, timeout=20, any_greeting=True)
    yield proxy, config, services, home
    services.stop(PROXY, timeout=15)


def test_maintenance_refuses_new_sessions_defers_data_and_mail_flows_after(
    managed_proxy, recorded
):
    proxy, config, services, home = managed_proxy
    host, port = proxy.inbound
    in_data = Raw(host, port)
    assert in_data.reply().startswith("220")
    in_data.command("EHLO a.example.org")
    assert in_data.command("MAIL FROM:<a@example.org>").startswith("250")
    assert in_data.command("RCPT TO:<user@example.com>").startswith("250")
    assert in_data.command("DATA").startswith("354")
    in_data.sock.sendall(b"Subject: in flight during maintenance\r\n\r\nbody\r\n")
    idle = Raw(host, port)
    assert idle.reply().startswith("220")
    assert idle.command("EHLO b.example.org").startswith("250")

    window = MaintenanceWindow(config, "upgrade", services=services, home=home)
    entered, leave = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold() -> None:
        try:
            with window:
                entered.set()
                leave.wait(60)
        except BaseException as exc:
            failures.append(exc)
            entered.set()

    with PortWatch(host, port) as watch:
        thread = threading.Thread(target=hold)
        thread.start()
        # The idle session is closed with 421 at once.
        assert idle.reply().startswith("421 4.3.2"), "idle session not closed with 421"
        # A new session is refused with 421 (by the proxy or the holding responder).
        fresh = Raw(host, port)
        assert fresh.reply().startswith("421 4.3.2")
        fresh.close()
        # The message in flight gets 451 at its end of data: the sender keeps it.
        assert in_data.command(".").startswith("451 4.3.2")
        assert entered.wait(30) and not failures, failures
        assert not services.is_running(PROXY)
        held = Raw(host, port)
        greeting = held.reply()
        assert greeting == (f"421 4.3.2 {config.smtp.hostname} Service temporarily "
                            "unavailable, try again later")
        held.close()
        leave.set()
        thread.join(60)
    assert not failures, failures
    assert services.is_running(PROXY)
    assert window.report.gate is not None and window.report.answered_by_holder >= 1
    print(f"\nmaintenance window {window.report.seconds:.2f}s; port refused "
          f"{watch.refused_seconds:.3f}s in all over {watch.probes} probes "
          f"(longest {watch.longest_gap:.3f}s); gate {window.report.gate.seconds:.2f}s")
    assert watch.refused_seconds < 0.5

    with SenderLoop(host, port, "after") as sender:
        assert wait_until(lambda: len(sender.accepted) >= 2, 20)
    got = recorded.wait_for(len(sender.accepted), timeout=20)
    assert not [m for m in got if b"in flight during maintenance" in m.content]
    # The health probe was judged but never delivered.
    assert not [m for m in recorded.messages() if b"Postwall health check" in m.content]


def test_mail_sent_through_a_window_is_delivered_exactly_once(managed_proxy, recorded):
    proxy, config, services, home = managed_proxy
    host, port = proxy.inbound
    with SenderLoop(host, port, "through") as sender:
        assert wait_until(lambda: len(sender.accepted) >= 3, 20)
        with MaintenanceWindow(config, "restore", services=services, home=home):
            time.sleep(1.0)
        count = len(sender.accepted)
        assert wait_until(lambda: len(sender.accepted) >= count + 3, 30)
    assert not sender.permanent_failures
    assert sender.temporary_failures >= 1  # it did meet the window
    messages = recorded.wait_for(len(sender.accepted), timeout=30)
    subjects = sorted(m.message["Subject"] for m in messages)
    assert subjects == sorted(sender.accepted), "lost or duplicated mail"


def _greeting(host: str, port: int) -> str:
    client = Raw(host, port)
    try:
        return client.reply()
    finally:
        client.close()


def test_a_worker_restarted_during_maintenance_comes_back_in_maintenance(managed_proxy):
    proxy, config, _services, _home = managed_proxy
    host, port = proxy.inbound
    control = ControlClient(config.data_dir)
    [worker] = control.workers()
    # What the window does first: the flag (held by this process), then the control socket.
    raise_flag(config.data_dir, "upgrade")
    try:
        assert control.set_maintenance(True)
        assert _greeting(host, port).startswith("421 4.3.2")
        os.kill(worker.pid, signal.SIGKILL)  # the supervisor starts a new worker
        assert wait_until(lambda: [w.pid for w in control.workers()] not in ([], [worker.pid]),
                          30)
        # The new worker was never told over the control socket: it read the flag.
        for _ in range(3):
            assert _greeting(host, port).startswith("421 4.3.2")
    finally:
        lower_flag(config.data_dir)
    # A window that vanished without saying so (no "maintenance off"): the worker notices
    # the flag is gone at its next periodic tick and serves again.
    assert wait_until(lambda: _greeting(host, port).startswith("220"), 15)


def test_a_stale_flag_does_not_keep_a_worker_in_maintenance(managed_proxy):
    proxy, config, _services, _home = managed_proxy
    host, port = proxy.inbound
    control = ControlClient(config.data_dir)
    [worker] = control.workers()
    # A flag left by a window whose process is gone (no such pid: beyond pid_max).
    flag_path(config.data_dir).write_text("999999999 12345 upgrade\n")
    try:
        os.kill(worker.pid, signal.SIGKILL)
        assert wait_until(lambda: [w.pid for w in control.workers()] not in ([], [worker.pid]),
                          30)
        assert _greeting(host, port).startswith("220")
    finally:
        lower_flag(config.data_dir)


def test_the_gate_passes_when_loopback_may_not_relay(proxy_factory):
    # A real appliance lists only the internal servers in relay_networks: the relay
    # listener refuses the gate's 127.0.0.1 with its ACL reply, which still proves it up.
    from appliance.ops.health import HealthGateFailed, run_gate

    proxy = proxy_factory({"relay_networks": ["192.0.2.0/24"], **OPS})
    config = loader.load(proxy.config_path).config
    result = run_gate(config, timeout=20)
    relay = [line for line in result.passed if line.startswith("relay banner")]
    assert relay and "Relay access denied" in relay[0]
    assert any(line.startswith("probe message") for line in result.passed)
    # And a listener that does not answer at all still fails the gate, with the reason.
    proxy.stop()
    with pytest.raises(HealthGateFailed, match="inbound banner"):
        run_gate(config, timeout=2)
