"""The proxy's local control socket: live sessions and reloads for the web UI.

Every worker process listens on its own unix socket, ``<data_dir>/run/control/worker-N.sock``
(directory 0700, socket 0600: only the proxy's own user can connect). The protocol is one
JSON object per line in each direction, one request per connection:

    {"command": "status"}   -> {"ok": true, "worker": 0, "pid": 123, "sessions": 2,
                                "config": "<fingerprint>", "draining": false}
    {"command": "sessions"} -> {"ok": true, "worker": 0, "sessions": [{...}, ...]}
    {"command": "reload"}   -> {"ok": true, "supervisor": 120}
    {"command": "maintenance", "state": "on"|"off"}
                            -> {"ok": true, "worker": 0, "maintenance": true, "closed": 3}
    {"command": "listeners"} -> {"ok": true, "worker": 0, "listeners": ["127.0.0.1:25"]}
                               with the listening sockets attached (SCM_RIGHTS)
    anything else           -> {"ok": false, "error": "..."}

A reload is SIGHUP to the supervisor (its pid is in ``run/serve.lock``): it validates the
configuration in a preflight child and only then has every worker reload without
dropping a session. The `config` fingerprint of each worker shows when that happened.

`ControlClient` is the synchronous side the web UI and `postwall status` use: it asks
every worker's socket and merges the answers; a socket nobody answers on is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.runtime import Runtime
    from appliance.smtp.session import PostwallSMTP

log = logging.getLogger("postwall.control")

RUN_DIRNAME = "run"
CONTROL_DIRNAME = "control"
LOCK_NAME = "serve.lock"
MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 8 * 1024 * 1024  # thousands of sessions still fit
REQUEST_TIMEOUT = 5.0
COMMANDS = ("status", "sessions", "reload", "maintenance", "listeners")


def control_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RUN_DIRNAME / CONTROL_DIRNAME


def socket_path(data_dir: Path, worker: int) -> Path:
    return control_dir(data_dir) / f"worker-{worker}.sock"


def supervisor_pid(data_dir: Path) -> int | None:
    """The pid `postwall serve` wrote into its lock file, or None."""
    try:
        text = (Path(data_dir) / RUN_DIRNAME / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_fingerprints: dict[int, tuple[Config, str]] = {}


# Settings the proxy does not use: a change there does not make a worker out of date.
NOT_FINGERPRINTED = frozenset({"webui"})


def config_fingerprint(config: Config) -> str:
    """A short digest of the proxy's effective configuration: equal digests, equal
    settings (the web UI's own section left out)."""
    known = _fingerprints.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    dump = config.model_dump_json(exclude=set(NOT_FINGERPRINTED))
    digest = hashlib.sha256(dump.encode()).hexdigest()[:16]
    _fingerprints.clear()  # one live configuration per process; keep no history
    _fingerprints[id(config)] = (config, digest)
    return digest


# -- the worker's side ---------------------------------------------------------------


def session_stage(server: PostwallSMTP) -> str:
    """Where a session is in the SMTP dialogue: connect, helo, mail, rcpt or data."""
    session = server.session
    conn = session.conn if session is not None else None
    if conn is None:
        return "connect"
    tx = session.tx
    if getattr(server, "_in_data", False) or (tx is not None and tx.content is not None):
        return "data"
    if tx is not None:
        return "rcpt" if tx.rcpt_tos else "mail"
    return "helo" if conn.helo else "connect"


def describe_session(server: PostwallSMTP) -> dict[str, Any]:
    session = server.session
    conn = session.conn if session is not None else None
    tx = session.tx if session is not None else None
    return {
        "id": conn.id if conn is not None else "",
        "client_ip": server.peer_ip_text,
        "client_port": conn.peer_port if conn is not None else 0,
        "listener": server.listener.value,
        "stage": session_stage(server),
        "helo": (conn.helo or "") if conn is not None else "",
        "tls": bool(conn.tls) if conn is not None else False,
        "started_at": conn.started_at if conn is not None else time.time(),
        "transactions": conn.transactions if conn is not None else 0,
        "sender": tx.mail_from if tx is not None else None,
        "recipients": list(tx.rcpt_tos) if tx is not None else [],
    }


class ControlServer:
    """One worker's control socket, served on its event loop."""

    def __init__(self, runtime: Runtime, worker: int) -> None:
        self.runtime = runtime
        self.worker = worker
        self.data_dir = Path(runtime.config.data_dir)
        self.path = socket_path(self.data_dir, worker)
        self._server: asyncio.AbstractServer | None = None
        # The worker's listening sockets, handed to the maintenance window's holding
        # responder so that it answers on the very same sockets (no gap, no uid rules).
        self.listening_sockets: Callable[[], list[socket.socket]] = list

    async def start(self) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a worker that died
        self._server = await asyncio.start_unix_server(
            self._serve_client, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    line = await reader.readline()
                reply = self.handle(line)
                if reply.pop("_send_listeners", False):
                    self._send_with_listeners(writer, reply)
                    return
            except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                reply = {"ok": False, "error": "request too long, incomplete or too slow"}
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {"ok": False, "error": "not a JSON object"}
        if not isinstance(request, dict) or request.get("command") not in COMMANDS:
            return {"ok": False, "error": f"unknown command; expected one of {COMMANDS}"}
        command = request["command"]
        if command == "status":
            return self.status()
        if command == "maintenance":
            state = request.get("state")
            if state not in ("on", "off"):
                return {"ok": False, "error": "maintenance needs \"state\": \"on\" or \"off\""}
            closed = self.runtime.set_maintenance(state == "on")
            return {"ok": True, "worker": self.worker, "maintenance": state == "on",
                    "closed": closed}
        if command == "listeners":
            return {"ok": True, "worker": self.worker, "_send_listeners": True}
        if command == "sessions":
            sessions = [describe_session(s) for s in list(self.runtime.sessions)]
            return {"ok": True, "worker": self.worker, "sessions": sessions}
        return self.reload()

    def _send_with_listeners(
        self, writer: asyncio.StreamWriter, reply: dict[str, Any]
    ) -> None:
        sockets = self.listening_sockets()
        reply["listeners"] = [_address_text(s.getsockname()) for s in sockets]
        payload = json.dumps(reply, separators=(",", ":")).encode() + b"\n"
        transport_socket = writer.get_extra_info("socket")
        # asyncio's transport socket offers no sendmsg: send on a duplicate of its fd.
        with socket.socket(fileno=os.dup(transport_socket.fileno())) as channel:
            channel.setblocking(True)
            channel.settimeout(REQUEST_TIMEOUT)
            socket.send_fds(channel, [payload], [s.fileno() for s in sockets])

    def status(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "ok": True,
            "worker": self.worker,
            "pid": os.getpid(),
            "sessions": len(runtime.sessions),
            "config": config_fingerprint(runtime.config),
            "draining": runtime.draining,
            "maintenance": runtime.maintenance,
        }

    def reload(self) -> dict[str, Any]:
        pid = supervisor_pid(self.data_dir)
        if pid is None or pid != os.getppid():
            # Only ever signal our own supervisor: a stale lock file could name anyone.
            return {"ok": False, "error": "this worker runs without a postwall serve supervisor"}
        os.kill(pid, signal.SIGHUP)
        log.info("reload requested over the control socket (worker %d)", self.worker)
        return {"ok": True, "supervisor": pid}


def _address_text(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# -- the client's side ---------------------------------------------------------------


class ControlError(Exception):
    """No worker answered, or one answered with an error."""


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    worker: int
    pid: int
    sessions: int
    config: str
    draining: bool


@dataclass(frozen=True, slots=True)
class SessionInfo:
    worker: int
    id: str
    client_ip: str
    client_port: int
    listener: str
    stage: str
    helo: str
    tls: bool
    started_at: float
    transactions: int
    sender: str | None
    recipients: list[str] = field(default_factory=list)

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.started_at)


class ControlClient:
    def __init__(self, data_dir: Path, timeout: float = 2.0) -> None:
        self.data_dir = Path(data_dir)
        self.timeout = timeout

    def sockets(self) -> list[Path]:
        directory = control_dir(self.data_dir)
        try:
            paths = [p for p in directory.iterdir() if p.name.endswith(".sock")]
        except OSError:
            return []

        def index(path: Path) -> int:
            digits = path.stem.rpartition("-")[2]
            return int(digits) if digits.isdigit() else 1 << 30

        return sorted(paths, key=index)

    def request(self, path: Path, command: str, **arguments: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise ControlError(f"{path}: reply larger than {MAX_REPLY_BYTES} bytes")
                if chunk.endswith(b"\n"):
                    break
        try:
            reply = json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ControlError(f"{path}: unreadable reply") from exc
        if not isinstance(reply, dict):
            raise ControlError(f"{path}: unreadable reply")
        return reply

    def _each(self, command: str) -> list[dict[str, Any]]:
        replies = []
        for path in self.sockets():
            try:
                reply = self.request(path, command)
            except (OSError, ControlError) as exc:
                log.debug("control socket %s: %s", path, exc)
                continue  # a worker being restarted, or a socket left by a dead one
            if reply.get("ok"):
                replies.append(reply)
        return replies

    def workers(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(
                worker=int(r["worker"]),
                pid=int(r["pid"]),
                sessions=int(r["sessions"]),
                config=str(r["config"]),
                draining=bool(r["draining"]),
            )
            for r in self._each("status")
        ]

    def sessions(self) -> list[SessionInfo]:
        found = []
        for reply in self._each("sessions"):
            for s in reply.get("sessions", []):
                found.append(
                    SessionInfo(
                        worker=int(reply["worker"]),
                        id=str(s.get("id", "")),
                        client_ip=str(s.get("client_ip", "")),
                        client_port=int(s.get("client_port", 0)),
                        listener=str(s.get("listener", "")),
                        stage=str(s.get("stage", "")),
                        helo=str(s.get("helo", "")),
                        tls=bool(s.get("tls")),
                        started_at=float(s.get("started_at", 0.0)),
                        transactions=int(s.get("transactions", 0)),
                        sender=s.get("sender"),
                        recipients=[str(r) for r in s.get("recipients", [])],
                    )
                )
        found.sort(key=lambda s: s.started_at)
        return found

    def reload(self) -> int:
        """Ask the supervisor to reload; returns its pid. ControlError if no worker
        answered (the proxy is not running) or the request was refused."""
        errors = []
        for path in self.sockets():
            try:
                reply = self.request(path, "reload")
            except (OSError, ControlError) as exc:
                errors.append(f"{path.name}: {exc}")
                continue
            if reply.get("ok"):
                return int(reply["supervisor"])
            errors.append(f"{path.name}: {reply.get('error')}")
        raise ControlError("; ".join(errors) or "the proxy is not running (no control socket)")

    def set_maintenance(self, on: bool) -> list[dict[str, Any]]:
        """Tell every worker to refuse new sessions with 421 and messages with 451 (on),
        or to serve again (off); returns the answers of the workers that were reached."""
        replies = []
        for path in self.sockets():
            try:
                reply = self.request(path, "maintenance", state="on" if on else "off")
            except (OSError, ControlError) as exc:
                log.debug("control socket %s: %s", path, exc)
                continue
            if reply.get("ok"):
                replies.append(reply)
        return replies

    def take_listeners(self) -> list[tuple[int, list[socket.socket]]]:
        """Duplicates of every worker's listening sockets, as (worker, sockets)."""
        taken = []
        for path in self.sockets():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.connect(str(path))
                    sock.sendall(b'{"command":"listeners"}\n')
                    message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 64)
            except OSError as exc:
                log.debug("control socket %s: %s", path, exc)
                continue
            sockets = [socket.socket(fileno=fd) for fd in fds]
            try:
                reply = json.loads(message)
            except (UnicodeDecodeError, json.JSONDecodeError):
                reply = {}
            if not reply.get("ok"):
                for s in sockets:
                    s.close()
                continue
            taken.append((int(reply.get("worker", -1)), sockets))
        return taken

    def wait_for_config(self, fingerprint: str, timeout: float = 15.0) -> list[WorkerStatus]:
        """Poll until every answering worker runs the configuration `fingerprint`;
        returns the workers' last status (check `config` to see who did not)."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers()
            if workers and all(w.config == fingerprint for w in workers):
                return workers
            if time.monotonic() >= deadline:
                return workers
            time.sleep(0.2)
