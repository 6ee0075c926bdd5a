"""A small asyncio client for clamd: INSTREAM scans and PING/VERSION health checks.

The Python clamd clients on PyPI (pyclamd, clamd) are synchronous and no longer
maintained; the protocol a mail gateway needs is a handful of null-terminated commands,
so it lives here, on the proxy's event loop, with explicit timeouts and errors.

Protocol (clamd(8), "z" commands): the client sends ``zINSTREAM\\0``, then the data as
chunks each prefixed by its length (4 octets, network byte order), then a zero-length
chunk; clamd answers one line ended by ``\\0`` and closes the connection:

- ``stream: OK``
- ``stream: Eicar-Signature FOUND``
- ``INSTREAM size limit exceeded. ERROR`` (more than clamd's StreamMaxLength), or any
  other ``... ERROR``.

clamd answers the size-limit error while the client is still sending and closes; the
reply is read concurrently with the upload, so it is not lost to a broken pipe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_REPLY_BYTES = 8192  # a clamd reply is one short line; more is not clamd
_UNIX_PATH_MAX = 107  # sun_path holds 108 octets including the terminating NUL
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.IGNORECASE
)
_SIGNATURE_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,199}$")


class ClamdError(Exception):
    """clamd could not give a scan result; the message says why."""


class ClamdUnavailable(ClamdError):
    """No connection: the socket is missing, refused, or the connect timed out."""


class ClamdTimeout(ClamdError):
    """Connected, but clamd did not finish the exchange in time."""


class ClamdProtocolError(ClamdError):
    """clamd answered something this client does not understand, or nothing at all."""


class ClamdScanError(ClamdError):
    """clamd answered ``... ERROR``; `detail` is its text without the ERROR marker."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"clamd error: {detail}")
        self.detail = detail


class ClamdSizeLimitExceeded(ClamdScanError):
    """The stream was longer than clamd's StreamMaxLength; nothing was scanned."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """`signature` is the name clamd reported, None for a clean stream."""

    signature: str | None = None

    @property
    def infected(self) -> bool:
        return self.signature is not None


CLEAN = ScanResult()


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class TCPAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


ClamdAddress = UnixAddress | TCPAddress


def parse_address(value: str) -> ClamdAddress:
    """An absolute path is a unix socket; ``HOST:PORT`` (``[v6]:PORT``) is TCP."""
    value = value.strip()
    if not value:
        raise ValueError("empty clamd address")
    if value.startswith("/"):
        if "\x00" in value:
            raise ValueError("a socket path must not contain NUL")
        if len(value.encode()) > _UNIX_PATH_MAX:
            raise ValueError(f"socket path longer than {_UNIX_PATH_MAX} octets: {value!r}")
        return UnixAddress(str(PurePosixPath(value)))
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(
            f"expected an absolute unix socket path or HOST:PORT, got {value!r}"
        )
    if not 0 < int(port) < 65536:
        raise ValueError(f"port out of range in {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if bracketed or not _HOSTNAME_RE.match(host):
            raise ValueError(f"invalid host in clamd address {value!r}") from None
        return TCPAddress(host.lower(), int(port))
    if ip.version == 6 and not bracketed:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port}")
    return TCPAddress(str(ip), int(port))


def _reply_text(raw: bytes) -> str:
    return raw.rstrip(b"\x00\r\n").decode("utf-8", "replace").strip()


def parse_scan_reply(raw: bytes) -> ScanResult:
    """Turn clamd's answer to INSTREAM into a result, or raise a ClamdError."""
    text = _reply_text(raw)
    if not text:
        raise ClamdProtocolError("clamd closed the connection without a reply")
    body = text.removeprefix("stream:").strip() if text.startswith("stream:") else text
    if body.endswith(" ERROR") or body == "ERROR":
        detail = body.removesuffix("ERROR").strip().rstrip(".") or "unspecified"
        if "size limit exceeded" in detail.lower():
            raise ClamdSizeLimitExceeded(detail)
        raise ClamdScanError(detail)
    if not text.startswith("stream:"):
        raise ClamdProtocolError(f"unexpected clamd reply {text[:200]!r}")
    if body == "OK":
        return CLEAN
    if body.endswith(" FOUND"):
        signature = body.removesuffix(" FOUND").strip()
        if not _SIGNATURE_RE.match(signature):
            raise ClamdProtocolError(f"unexpected signature name in {text[:200]!r}")
        return ScanResult(signature)
    raise ClamdProtocolError(f"unexpected clamd reply {text[:200]!r}")


def chunk_frames(data: bytes | memoryview, chunk_size: int = DEFAULT_CHUNK_SIZE
                 ) -> Iterator[bytes | memoryview]:
    """The INSTREAM body: length-prefixed chunks of `data`, then the zero-length end."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        piece = view[start : start + chunk_size]
        yield struct.pack("!L", len(piece))
        yield piece
    yield struct.pack("!L", 0)


class ClamdClient:
    """One clamd, addressed by a unix socket path or ``HOST:PORT``.

    Every call opens its own connection (clamd closes it after a z-command), so a client
    is cheap, holds no state and may be shared by concurrent sessions. `connect_timeout`
    bounds the connect, `timeout` the whole exchange including the connect.

    Plain non-blocking sockets with the loop's ``sock_*`` calls, not asyncio streams: when
    clamd answers early and closes (size limit), a stream transport turns the broken pipe
    into an error that discards the reply already received; a socket still hands it over.
    """

    def __init__(
        self,
        address: str | ClamdAddress,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"ClamdClient({str(self.address)!r})"

    async def ping(self) -> None:
        """Raise a ClamdError unless clamd answers PONG."""
        reply = _reply_text(await self._command(b"zPING\0", "PING"))
        if reply != "PONG":
            raise ClamdProtocolError(f"expected PONG, got {reply[:200]!r}")

    async def version(self) -> str:
        """clamd's version line, e.g. 'ClamAV 1.4.6/27000/Tue Nov 24 09:00:00 2026'."""
        reply = _reply_text(await self._command(b"zVERSION\0", "VERSION"))
        if not reply.startswith("ClamAV "):
            raise ClamdProtocolError(f"unexpected VERSION reply {reply[:200]!r}")
        return reply

    async def instream(self, data: bytes | memoryview) -> ScanResult:
        """Scan `data` (e.g. a whole message; clamd decodes MIME and archives itself)."""
        return parse_scan_reply(await self._exchange(b"zINSTREAM\0", "INSTREAM", data))

    async def _command(self, command: bytes, name: str) -> bytes:
        return await self._exchange(command, name, None)

    async def _exchange(self, command: bytes, name: str, data: bytes | memoryview | None
                        ) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                sock = await self._connect()
                try:
                    return await self._talk(sock, command, data)
                except OSError as exc:
                    raise ClamdProtocolError(
                        f"clamd at {self.address}: {name} failed: {exc}") from exc
                finally:
                    sock.close()
        except TimeoutError:
            raise ClamdTimeout(
                f"clamd at {self.address} did not answer {name} within {self.timeout:g}s"
            ) from None

    async def _connect(self) -> socket.socket:
        address = self.address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if isinstance(address, UnixAddress):
                    return await _connected(loop, socket.AF_UNIX, address.path)
                infos = await loop.getaddrinfo(address.host, address.port,
                                               type=socket.SOCK_STREAM)
                error: OSError | None = None
                for family, _, _, _, sockaddr in infos:
                    try:
                        sock = await _connected(loop, family, sockaddr)
                    except OSError as exc:
                        error = exc
                        continue
                    # Small writes (command, last chunk) must not wait for a delayed ACK.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return sock
                raise error or OSError(f"no address for {address.host}")
        except TimeoutError:
            raise ClamdUnavailable(
                f"cannot connect to clamd at {address}: no answer within "
                f"{self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            # asyncio's own message ("Connect call failed ...") hides the cause.
            reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 \
                else str(exc)
            raise ClamdUnavailable(f"cannot connect to clamd at {address}: {reason}") from exc

    async def _talk(self, sock: socket.socket, command: bytes,
                    data: bytes | memoryview | None) -> bytes:
        # clamd may answer before the upload ends (size limit) and then close: read the
        # reply alongside the upload and prefer it to the upload's broken pipe.
        loop = asyncio.get_running_loop()
        reply = asyncio.ensure_future(_recv_reply(loop, sock))
        upload = asyncio.ensure_future(self._upload(loop, sock, command, data))
        try:
            done, _ = await asyncio.wait({reply, upload}, return_when=asyncio.FIRST_COMPLETED)
            if reply in done:
                return reply.result()
            upload_error = upload.exception()
            if upload_error is not None and not isinstance(upload_error, ConnectionError):
                raise upload_error
            try:
                return await reply
            except ClamdProtocolError as exc:
                if upload_error is None:
                    raise
                raise ClamdProtocolError(
                    f"clamd at {self.address} closed the connection while receiving: "
                    f"{exc}; send failed with {upload_error}") from exc
        finally:
            for task in (reply, upload):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reply, upload, return_exceptions=True)

    async def _upload(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      command: bytes, data: bytes | memoryview | None) -> None:
        await loop.sock_sendall(sock, command)
        if data is None:
            return
        for frame in chunk_frames(data, self.chunk_size):
            await loop.sock_sendall(sock, frame)


async def _connected(loop: asyncio.AbstractEventLoop, family: int,
                     address: str | tuple[Any, ...]) -> socket.socket:
    delay = 0.005
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                await loop.sock_connect(sock, address)
                return sock
            try:
                sock.connect(address)
            except BlockingIOError:
                # A unix connect never "progresses": EAGAIN means clamd's listen backlog
                # is full (and asyncio's sock_connect would wrongly report success).
                # Retry shortly; the connect timeout bounds the wait.
                sock.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            return sock
        except BaseException:
            sock.close()
            raise


async def _recv_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """One reply: up to the terminating NUL, or what came before the connection closed."""
    buffer = bytearray()
    while len(buffer) <= MAX_REPLY_BYTES:
        try:
            chunk = await loop.sock_recv(sock, MAX_REPLY_BYTES + 1 - len(buffer))
        except ConnectionError as exc:
            if buffer:
                break
            raise ClamdProtocolError(f"connection lost without a reply: {exc}") from exc
        if not chunk:
            break
        buffer += chunk
        end = buffer.find(b"\0")
        if end >= 0:
            return bytes(buffer[: end + 1])
    else:
        raise ClamdProtocolError(f"clamd reply longer than {MAX_REPLY_BYTES} octets")
    if not buffer:
        raise ClamdProtocolError("clamd closed the connection without a reply")
    return bytes(buffer)
