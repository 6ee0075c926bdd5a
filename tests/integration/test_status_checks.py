"""The health checks against real peers: clamd started from its Debian package with a
local signature file, and DNS servers on loopback (a responder answering with a chosen
code, and a port where nobody answers).

The configuration sections for ClamAV and DNS arrive with their filters; the checks only
read `filters.clamav.{mode,address}` and `dns.nameservers`, so a plain namespace carries
them here."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.rcode
import pytest

from appliance.status import State, check_clamd, check_dns
from tests.support.services import free_port, wait_until

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"


@pytest.fixture
def clamd(tmp_path: Path) -> Iterator[Path]:
    if not Path(CLAMD).exists():
        pytest.skip("clamd is not installed (scripts/install-test-deps installs it)")
    database = tmp_path / "db"
    database.mkdir()
    (database / "test.ndb").write_text(f"Test.EICAR:0:*:{EICAR.hex()}\n")
    sock, pid = tmp_path / "clamd.sock", tmp_path / "clamd.pid"
    conf = tmp_path / "clamd.conf"
    conf.write_text(f"LocalSocket {sock}\nLocalSocketMode 600\nDatabaseDirectory {database}\n"
                    f"PidFile {pid}\nLogFile {tmp_path / 'clamd.log'}\nUser root\n"
                    "Foreground yes\n")
    proc = subprocess.Popen([CLAMD, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(sock.exists, 30), "clamd did not create its socket"
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def clamav_config(address: str, mode: str = "block") -> SimpleNamespace:
    return SimpleNamespace(filters=SimpleNamespace(clamav=SimpleNamespace(mode=mode,
                                                                          address=address)))


def test_clamd_answers_ping(clamd: Path) -> None:
    outcome = check_clamd(clamav_config(str(clamd)))  # type: ignore[arg-type]
    assert outcome.state is State.OK and "answers PING" in outcome.summary


def test_clamd_missing_or_off(tmp_path: Path) -> None:
    outcome = check_clamd(clamav_config(str(tmp_path / "nothing.sock")))  # type: ignore[arg-type]
    assert outcome.state is State.FAIL and "No such file" in outcome.summary
    port = free_port()
    outcome = check_clamd(clamav_config(f"127.0.0.1:{port}"))  # type: ignore[arg-type]
    assert outcome.state is State.FAIL and "refused" in outcome.summary.lower()
    outcome = check_clamd(clamav_config("/x", mode="off"))  # type: ignore[arg-type]
    assert outcome.state is State.UNKNOWN


class Responder:
    """A DNS server on loopback that answers every question with `rcode`."""

    def __init__(self, rcode: int) -> None:
        self.rcode = rcode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            reply.set_rcode(self.rcode)
            reply.flags |= dns.flags.RA
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def responders() -> Iterator[dict[str, Responder]]:
    found = {"ok": Responder(dns.rcode.NOERROR), "nx": Responder(dns.rcode.NXDOMAIN),
             "refused": Responder(dns.rcode.REFUSED)}
    yield found
    for responder in found.values():
        responder.close()


def dns_config(*servers: str) -> SimpleNamespace:
    return SimpleNamespace(dns=SimpleNamespace(nameservers=list(servers)))


def test_dns_resolvers_answering_failing_and_silent(responders: dict[str, Responder]) -> None:
    ok, nx, refused = (f"127.0.0.1:{responders[k].port}" for k in ("ok", "nx", "refused"))
    outcome = check_dns(dns_config(ok, nx))  # type: ignore[arg-type]
    assert outcome.state is State.OK and ok in outcome.summary and nx in outcome.summary
    outcome = check_dns(dns_config(ok, refused))  # type: ignore[arg-type]
    assert outcome.state is State.WARN and f"{refused}: REFUSED" in outcome.summary
    silent = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    outcome = check_dns(dns_config(silent))  # type: ignore[arg-type]
    assert outcome.state is State.FAIL and silent in outcome.summary
    assert time.monotonic() - started < 5
