"""The holding responder: while the proxy is stopped for maintenance, something still
answers on its SMTP ports, with `421 4.3.2 <host> Service temporarily unavailable, try
again later`, so that sending servers queue the mail and retry instead of seeing a
refused connection (or worse, trying a lower-priority MX that may bounce).

It prefers the proxy's own listening sockets, handed over on the control socket
(`listeners`): the same sockets, so there is no moment in which the port is closed, the
connections already waiting in a worker's queue are answered rather than reset when that
worker exits, and the new proxy joins them through SO_REUSEPORT as the same user (Linux
lets only sockets of one user share a port). Where the proxy is not running it binds the
listeners itself.

Runs in a thread of the process that holds the maintenance window.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config.schema import Config, parse_hostport
from appliance.control import ControlClient

log = logging.getLogger("postwall.ops.holder")

LINGER_SECONDS = 2.0
MAX_LINGERING = 512
BACKLOG = 1024


@dataclass
class HeldSocket:
    sock: socket.socket
    address: str
    borrowed: bool  # the proxy's own socket (True) or bound here (False)


def listener_addresses(config: Config) -> list[tuple[str, int]]:
    addresses = [parse_hostport(config.listen.inbound)]
    if config.listen.relay:
        addresses.append(parse_hostport(config.listen.relay))
    return addresses


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class HoldingResponder:
    def __init__(self, hostname: str, held: list[HeldSocket]) -> None:
        self.greeting = (
            f"421 4.3.2 {hostname} Service temporarily unavailable, try again later\r\n"
        ).encode()
        self.held = held
        self.answered = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lingering: dict[socket.socket, float] = {}
        # Sockets to close are handed to the responder's thread, which owns the selector.
        self._pending_close: list[HeldSocket] = []
        self._close_done = threading.Event()

    @classmethod
    def for_config(cls, config: Config) -> HoldingResponder:
        """Take over the running proxy's sockets; bind those that nobody serves."""
        held: list[HeldSocket] = []
        for _worker, sockets in ControlClient(config.data_dir).take_listeners():
            for sock in sockets:
                name = sock.getsockname()
                held.append(HeldSocket(sock, _address_text(str(name[0]), int(name[1])), True))
        covered = {h.address for h in held}
        try:
            for host, port in listener_addresses(config):
                address = _address_text(host, port)
                if address not in covered:
                    held.append(HeldSocket(bind_listener(host, port), address, False))
        except OSError:
            for h in held:
                h.sock.close()
            raise
        return cls(config.smtp.hostname, held)

    @property
    def addresses(self) -> list[str]:
        return sorted({h.address for h in self.held})

    def start(self) -> None:
        for h in self.held:
            h.sock.setblocking(False)
            self._selector.register(h.sock, selectors.EVENT_READ, "listener")
        self._thread = threading.Thread(target=self._run, name="holding-responder", daemon=True)
        self._thread.start()

    def release_own_sockets(self) -> None:
        """Close the sockets bound here (not the proxy's): a proxy running as another
        user could not bind next to them."""
        self._close_where(lambda h: not h.borrowed)

    def close(self) -> None:
        """Answer whatever is still queued, then close every socket."""
        self._close_where(lambda h: True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LINGER_SECONDS + 1)
        for sock in list(self._lingering):
            sock.close()
        self._lingering.clear()
        self._selector.close()

    def _close_where(self, which: Callable[[HeldSocket], bool]) -> None:
        self._close_done.clear()
        self._pending_close = [h for h in self.held if which(h)]
        if self._thread is not None and self._thread.is_alive():
            self._close_done.wait(timeout=5)
        else:
            self._do_close()

    def _do_close(self) -> None:
        closing, self._pending_close = self._pending_close, []
        for h in closing:
            self._accept_all(h.sock)  # connections already in the queue get their 421
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(h.sock)
            h.sock.close()
            self.held.remove(h)
        self._close_done.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pending_close:
                self._do_close()
            for key, _events in self._selector.select(timeout=0.05):
                if key.data == "listener":
                    self._accept_all(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._read_or_close(key.fileobj)  # type: ignore[arg-type]
            self._expire()

    def _accept_all(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.answered += 1
            try:
                conn.setblocking(False)
                conn.send(self.greeting)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                conn.close()
                continue
            if len(self._lingering) >= MAX_LINGERING:
                conn.close()
                continue
            # Read until the client closes: closing with unread input would reset the
            # connection and could destroy the 421 before the client read it.
            self._lingering[conn] = time.monotonic() + LINGER_SECONDS
            self._selector.register(conn, selectors.EVENT_READ, "client")

    def _read_or_close(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self._lingering.pop(conn, None)
        conn.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for conn, deadline in list(self._lingering.items()):
            if now >= deadline:
                self._drop(conn)
