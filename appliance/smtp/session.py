"""aiosmtpd's SMTP protocol, adapted: limits, connection policy, and a DATA reader that
works in large chunks instead of line by line (where aiosmtpd spends most of its time)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, Session

from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.smtp import replies
from appliance.verdict import Reply

if TYPE_CHECKING:
    from appliance.runtime import Runtime
    from appliance.smtp.downstream import DownstreamTransaction

log = logging.getLogger("postwall.smtp")

READ_CHUNK = 262144
END_OF_DATA = b"\r\n.\r\n"
ANY_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
SOURCE_ROUTE_RE = re.compile(r"^\s*<\s*@")


class _PerClassInspect:
    """aiosmtpd introspects the protocol and the handler afresh for every connection
    (AUTH methods, hook signatures, command methods: ~130 us, a tenth of a worker's CPU
    at full load). Postwall offers no AUTH, and the rest depends only on the classes, so
    it is computed once per class."""

    _signatures: ClassVar[dict[object, inspect.Signature]] = {}

    @staticmethod
    def getmembers(obj: object) -> list[tuple[str, object]]:
        return []

    @classmethod
    def signature(cls, obj: Any) -> inspect.Signature:
        key = getattr(obj, "__func__", obj)
        known = cls._signatures.get(key)
        if known is None:
            known = cls._signatures[key] = inspect.signature(obj)
        return known


@functools.cache
def _class_dir(kind: type) -> list[str]:
    return dir(kind)


def _dir_of_class(obj: object) -> list[str]:
    """aiosmtpd only looks for smtp_*/handle_* methods, which live on the class."""
    return _class_dir(type(obj))


aiosmtpd.smtp.inspect = _PerClassInspect  # type: ignore[attr-defined]
aiosmtpd.smtp.dir = _dir_of_class  # type: ignore[attr-defined]


class PostwallSession(Session):
    """aiosmtpd's session plus our typed state (never a dict keyed by peer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.conn: ConnectionContext | None = None
        self.tx: TransactionContext | None = None
        self.downstream: DownstreamTransaction | None = None
        self.errors = 0
        self.commands = 0


class DataError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class PostwallSMTP(SMTP):
    session: PostwallSession

    def __init__(self, runtime: Runtime, listener: Listener, handler: Any, **kwargs: Any) -> None:
        config = runtime.config
        # aiosmtpd sizes its StreamReader from this attribute inside __init__.
        self.line_length_limit = config.limits.max_command_length
        super().__init__(
            handler,
            data_size_limit=config.limits.max_message_size,
            enable_SMTPUTF8=config.smtp.smtputf8,
            decode_data=False,
            hostname=config.smtp.hostname,
            ident=config.smtp.banner,
            timeout=config.limits.idle_timeout,
            command_call_limit=config.limits.max_commands,
            **kwargs,
        )
        self.runtime = runtime
        self.listener = listener
        self.peer_ip_text = ""
        self._session_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self.limit_exceeded: str | None = None

    def _create_session(self) -> PostwallSession:
        return PostwallSession(self.loop)

    # -- connection lifetime -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        previous = self.session
        super().connection_made(transport)
        if not first and previous is not None:
            # STARTTLS: aiosmtpd starts a fresh session; the connection is the same one,
            # but everything the client said before the handshake is forgotten (RFC 3207).
            if previous.downstream is not None:
                previous.downstream.discard_now()
            self.session.conn = previous.conn
            self.session.errors = previous.errors
            if previous.conn is not None:
                previous.conn.tls = True
                previous.conn.helo = None
        if first:
            peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
            self.peer_ip_text = str(peer[0])
            self._counted = self.runtime.session_opened(self)
            self._session_timer = self.loop.call_later(
                self.runtime.config.limits.session_timeout, self._session_expired
            )

    def connection_lost(self, error: Exception | None) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        session = self.session
        if session is not None and session.downstream is not None:
            # The client vanished: close the downstream before DATA completes, so nothing
            # half-received is ever delivered.
            session.downstream.discard_now()
            session.downstream = None
        if self._counted:
            self._counted = False
            self.runtime.session_closed(self)
        super().connection_lost(error)

    def _session_expired(self) -> None:
        self._session_timer = None
        self.close_with(replies.SESSION_TIMEOUT)

    def close_with(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{reply}\r\n".encode())
            self.transport.close()

    async def _handle_client(self) -> None:
        refusal = await self.event_handler.on_connect(self)
        if refusal is not None:
            await self.push(str(refusal))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        text = status if isinstance(status, str) else status.decode("ascii", "replace")
        if text[:1] in ("4", "5") and not text.startswith("421"):
            self.session.errors += 1
            if self.session.errors > self.runtime.config.limits.max_errors:
                await super().push(text)
                self.close_with(replies.TOO_MANY_ERRORS)
                return
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        session = self.session
        tx = session.tx if session else None
        conn = session.conn if session else None
        ident = tx.id if tx else (conn.id if conn else "-")
        log.error("id=%s peer=%s unexpected error", ident, self.peer_ip_text, exc_info=error)
        self.runtime.count_error("exception")
        return str(replies.LOCAL_ERROR)

    # -- commands ------------------------------------------------------------

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and SOURCE_ROUTE_RE.match(arg.partition(":")[2] if ":" in arg else arg):
            await self.push(str(replies.SOURCE_ROUTE))
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limits = self.runtime.config.limits
        try:
            async with asyncio.timeout(limits.data_timeout):
                raw = await self._read_data(limits.max_message_size)
            if raw is None:  # the client went away mid-DATA: nothing is delivered
                await self.event_handler.abort_transaction(self, "disconnect during DATA")
                if self.transport is not None:
                    self.transport.close()
                return
            content = self._check_and_unstuff(raw)
        except TimeoutError:
            await self.event_handler.abort_transaction(self, "data timeout")
            self.close_with(replies.DATA_TIMEOUT)
            return
        except DataError as exc:
            await self.event_handler.abort_transaction(self, exc.reply.text)
            self._set_post_data_state()
            await self.push(str(exc.reply))
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self, max_size: int) -> bytes | None:
        """Read up to the end-of-data line; None when the connection closes first,
        DataError (after reading to the end) when the message is too big.

        Only <CRLF>.<CRLF> ends the data (RFC 5321 4.1.1.4): a bare-LF dot line is
        message content, which is what closes the SMTP smuggling hole."""
        reader = self._reader
        buf = bytearray()
        scan_from = 0
        discarded = 0
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return None
            self._reset_timeout()
            buf += chunk
            if discarded == 0 and len(buf) >= 3 and buf.startswith(b".\r\n"):
                self._unread(buf[3:])
                return b""
            if discarded == 0 and len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                continue
            end = buf.find(END_OF_DATA, scan_from)
            if end >= 0:
                self._unread(buf[end + 5 :])
                if discarded:
                    raise DataError(replies.MESSAGE_TOO_BIG)
                return bytes(buf[: end + 2])
            if len(buf) > max_size + 4096:
                # Too big: keep reading to the end so the reply lands in sync, but keep
                # only the tail where the end-of-data line may start.
                discarded += len(buf) - 4
                del buf[:-4]
            scan_from = max(0, len(buf) - 4)

    def _unread(self, leftover: bytearray) -> None:
        if leftover:
            # Pipelined commands after the end of data go back to the reader.
            self._reader._buffer[0:0] = leftover  # type: ignore[attr-defined]

    def _check_and_unstuff(self, raw: bytes) -> bytes:
        limits = self.runtime.config.limits
        if len(raw) > limits.max_message_size:
            raise DataError(replies.MESSAGE_TOO_BIG)
        if b"\x00" in raw:
            raise DataError(replies.NUL_IN_DATA)
        if len(raw) > limits.max_line_length and max(map(len, raw.split(b"\n"))) > (
            limits.max_line_length + 1
        ):
            raise DataError(replies.LINE_TOO_LONG)
        # Transparency (RFC 5321 4.5.2): drop the first dot of every line starting with one.
        content = raw.replace(b"\r\n.", b"\r\n")
        if content.startswith(b"."):
            content = content[1:]
        # Counting is far cheaper than a regex scan, and a clean message needs only this.
        crlf = content.count(b"\r\n")
        if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
            if self.runtime.config.smtp.bare_line_ends == "reject":
                raise DataError(replies.BARE_LINE_END)
            content = ANY_LINE_END_RE.sub(b"\r\n", content)
        return content
