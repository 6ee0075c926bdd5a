"""A real clamd for the tests, run as a plain process with a local signature database.

There is no network for freshclam, and clamd refuses to start with an empty database
directory, so each instance gets its own directory with two custom signature files that
detect the EICAR test string (see TESTING.md):

- ``db/test.ndb``: the EICAR string as a body signature (found in a plain body, in a
  decoded base64 attachment and inside archives) -> ``Test.EICAR.UNOFFICIAL``;
- ``db/test.hdb``: the MD5 of the 68-octet EICAR file -> ``Test.EICAR.MD5.UNOFFICIAL``.

clamd runs in the foreground as our child (its PidFile holds the same PID), listens on a
unix socket in its directory and, optionally, on a free loopback TCP port, and is
stopped by that PID.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

from tests.support.services import _REAPER as REAPER
from tests.support.services import (
    LOOPBACK,
    SAFE_ENV,
    LocalDaemon,
    ServiceError,
    _make_base_dir,
    _read_text,
    _register,
    _tail,
    free_port,
    wait_until,
)

CLAMD_BIN = Path("/usr/sbin/clamd")
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_MD5 = "44d88612fea8a8f36de82e1278abb02f"
NDB_SIGNATURE = "Test.EICAR"
HDB_SIGNATURE = "Test.EICAR.MD5"


def clamd_unavailable_reason() -> str | None:
    if not CLAMD_BIN.exists():
        return f"clamd is not installed ({CLAMD_BIN} missing): run scripts/install-test-deps"
    return None


class ClamdInstance(LocalDaemon):
    """clamd with only the test signatures, on ``base_dir/clamd.sock`` (+ TCP if asked).

    `stream_max_length` is clamd's StreamMaxLength (octets); None keeps clamd's default.
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        stream_max_length: int | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-clamd-") if base_dir is None else base_dir
        self.db_dir = self.base_dir / "db"
        self.config_path = self.base_dir / "clamd.conf"
        self.socket_path = self.base_dir / "clamd.sock"
        self.pid_path = self.base_dir / "clamd.pid"
        self.log_path = self.base_dir / "clamd.log"
        self.output_path = self.base_dir / "output.log"
        self.tcp_port: int | None = free_port() if tcp else None
        self.stream_max_length = stream_max_length
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The unix socket, as filters.clamav.address takes it."""
        return str(self.socket_path)

    @property
    def tcp_address(self) -> str:
        if self.tcp_port is None:
            raise ServiceError("this clamd was started without a TCP socket")
        return f"{LOOPBACK}:{self.tcp_port}"

    # -- configuration -----------------------------------------------------------------

    def configure(self) -> None:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        (self.db_dir / "test.ndb").write_text(f"{NDB_SIGNATURE}:0:*:{EICAR.hex()}\n")
        (self.db_dir / "test.hdb").write_text(f"{EICAR_MD5}:{len(EICAR)}:{HDB_SIGNATURE}\n")
        lines = [
            "# Written by tests/support/clamd.py for one test run.",
            "Foreground yes",
            f"LocalSocket {self.socket_path}",
            "LocalSocketMode 666",
            f"DatabaseDirectory {self.db_dir}",
            f"PidFile {self.pid_path}",
            f"LogFile {self.log_path}",
            "LogTime yes",
            # The OS may not delete a socket file left by a killed instance.
            "FixStaleSocket yes",
            "SelfCheck 3600",
        ]
        if os.geteuid() == 0:
            lines.append("User root")  # no clamav user needed for a throwaway instance
        if self.tcp_port is not None:
            lines += [f"TCPSocket {self.tcp_port}", f"TCPAddr {LOOPBACK}"]
        if self.stream_max_length is not None:
            lines.append(f"StreamMaxLength {self.stream_max_length}")
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ClamdInstance:
        """Start clamd and wait until it answers PING on its unix socket (and TCP)."""
        if self.is_running:
            return self
        reason = clamd_unavailable_reason()
        if reason:
            raise ServiceError(reason)
        self.configure()
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(CLAMD_BIN), "-c", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=SAFE_ENV, start_new_session=True,
            )
        proc = self._proc
        REAPER.watch(proc.pid, group=True)
        _register(self)

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            unix_ok = ping(socket.AF_UNIX, str(self.socket_path))
            tcp_ok = self.tcp_port is None or ping(socket.AF_INET, (LOOPBACK, self.tcp_port))
            return unix_ok and tcp_ok

        if not wait_until(ready, timeout, interval=0.02) or proc.poll() is not None:
            self.stop()
            raise ServiceError(f"clamd did not start within {timeout:g}s:\n{self.diagnostics()}")
        pid_text = _read_text(self.pid_path).strip()
        if pid_text != str(proc.pid):
            self.stop()
            raise ServiceError(f"clamd's PID file says {pid_text!r}, its PID is {proc.pid}")
        return self

    def _after_stop(self, pid: int) -> None:
        # A SIGKILLed clamd leaves its socket file behind; callers expect "refused".
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- observation -------------------------------------------------------------------

    @property
    def log(self) -> str:
        return _read_text(self.log_path)

    def diagnostics(self) -> str:
        code = self._proc.poll() if self._proc else None
        status = f"exit code {code}" if code is not None else "still running"
        return (f"{status}; output:\n{_tail(_read_text(self.output_path), 30)}\n"
                f"log:\n{_tail(self.log, 30)}")


def ping(family: int, address: str | tuple[str, int], timeout: float = 1.0) -> bool:
    """True if clamd at `address` answers zPING with PONG (blocking, for start-up)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"zPING\0")
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == b"PONG\0"
    except OSError:
        return False
