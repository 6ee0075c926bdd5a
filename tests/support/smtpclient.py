"""A small blocking SMTP client for tests that must see every reply or send exact octets.

`smtplib` raises on the first refusal and rewrites DATA (line ends, dot-stuffing); tests of
a proxy need each reply (code, enhanced status, text) and sometimes deliberately broken
input. This client sends what it is told and returns `Reply` objects; it never raises on
an SMTP error reply.

    with SMTPClient("127.0.0.1", port) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.net")
        smtp.rcpt("b@example.com")
        reply = smtp.data(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert reply.code == 250

    result = send_message(host, port, content, mail_from=..., rcpt_tos=[...])
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SMTPProtocolError(RuntimeError):
    """The server closed the connection or answered something that is not SMTP."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All reply lines joined with newlines, without the code."""
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code (RFC 3463) of the first line, e.g. '5.1.1', if any."""
        first = self.lines[0].split(" ", 1)[0] if self.lines and self.lines[0] else ""
        return first if _ENHANCED.match(first) else None

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return "\n".join(f"{self.code} {line}" for line in self.lines)


def dot_stuff(content: bytes) -> bytes:
    """Content as DATA payload: CRLF line ends, leading dots doubled, final '.' line added."""
    lines = _LINE_END.split(content)
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


class SMTPClient:
    """One SMTP connection. The greeting is read on connect (`.greeting`)."""

    def __init__(
        self, host: str, port: int, timeout: float = 30.0, *, source: str | None = None
    ) -> None:
        """`source`: the local address to connect from (any 127.x works on loopback, so
        a test can be a client other than 127.0.0.1)."""
        self.host = host
        self.port = port
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.features: dict[str, str] = {}
        self.greeting = self.read_reply()

    def __enter__(self) -> SMTPClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SMTPProtocolError(
                    f"connection closed by {self.host}:{self.port} (pending {self._buffer!r})"
                )
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def read_reply(self) -> Reply:
        """Read one (possibly multi-line) reply."""
        lines: list[str] = []
        code = 0
        while True:
            raw = self._readline().decode("utf-8", "replace")
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in ("", " ", "-"):
                raise SMTPProtocolError(f"not an SMTP reply line: {raw!r}")
            code = int(raw[:3])
            lines.append(raw[4:])
            if raw[3:4] != "-":
                return Reply(code, tuple(lines))

    def send_raw(self, data: bytes) -> None:
        """Send octets exactly as given."""
        self.sock.sendall(data)

    def command(self, line: str | bytes) -> Reply:
        """Send one command line (CRLF appended) and read the reply."""
        data = line.encode() if isinstance(line, str) else line
        self.send_raw(data + b"\r\n")
        return self.read_reply()

    def ehlo(self, name: str = "client.example.net") -> Reply:
        reply = self.command(f"EHLO {name}")
        if reply.code == 250:
            self.features = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.features[keyword.upper()] = params
        return reply

    def helo(self, name: str = "client.example.net") -> Reply:
        return self.command(f"HELO {name}")

    def mail(self, sender: str, options: Iterable[str] = ()) -> Reply:
        return self.command(" ".join([f"MAIL FROM:<{sender}>", *options]))

    def rcpt(self, recipient: str, options: Iterable[str] = ()) -> Reply:
        return self.command(" ".join([f"RCPT TO:<{recipient}>", *options]))

    def data(self, content: bytes) -> Reply:
        """DATA with `content` (line ends normalised, dot-stuffed); the final reply.

        If the server does not answer DATA with 354, that reply is returned instead.
        """
        reply = self.command("DATA")
        if reply.code != 354:
            return reply
        self.send_raw(dot_stuff(content))
        return self.read_reply()

    def data_raw(self, payload: bytes) -> Reply:
        """DATA with `payload` sent verbatim: the caller supplies the '\\r\\n.\\r\\n' end."""
        reply = self.command("DATA")
        if reply.code != 354:
            return reply
        self.send_raw(payload)
        return self.read_reply()

    def rset(self) -> Reply:
        return self.command("RSET")

    def noop(self) -> Reply:
        return self.command("NOOP")

    def quit(self) -> Reply:
        return self.command("QUIT")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Transaction:
    """Every reply of one send_message() call."""

    greeting: Reply
    ehlo: Reply | None = None
    mail: Reply | None = None
    rcpts: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None

    @property
    def accepted(self) -> bool:
        """True if the message was accepted at the end of DATA."""
        return self.data is not None and self.data.code == 250

    @property
    def final(self) -> Reply:
        """The last reply that decided the transaction (DATA, else the last refusal)."""
        if self.data is not None:
            return self.data
        if self.rcpts:
            return list(self.rcpts.values())[-1]
        return self.mail or self.ehlo or self.greeting


def send_message(
    host: str,
    port: int,
    content: bytes,
    *,
    mail_from: str,
    rcpt_tos: Sequence[str],
    helo: str = "client.example.net",
    mail_options: Iterable[str] = (),
    timeout: float = 30.0,
    source: str | None = None,
) -> Transaction:
    """One complete transaction; stops early (without raising) when the server refuses."""
    with SMTPClient(host, port, timeout=timeout, source=source) as smtp:
        result = Transaction(greeting=smtp.greeting)
        if smtp.greeting.code != 220:
            return result
        result.ehlo = smtp.ehlo(helo)
        if result.ehlo.code != 250:
            return result
        result.mail = smtp.mail(mail_from, mail_options)
        if result.mail.code == 250:
            for rcpt in rcpt_tos:
                result.rcpts[rcpt] = smtp.rcpt(rcpt)
            if any(r.code in (250, 251) for r in result.rcpts.values()):
                result.data = smtp.data(content)
        with contextlib.suppress(OSError, SMTPProtocolError):
            smtp.quit()
        return result
