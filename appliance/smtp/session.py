"""aiosmtpd's SMTP protocol, adapted: limits, connection policy, and a DATA reader that
works in large chunks instead of line by line (where aiosmtpd spends most of its time)."""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import re
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import TYPE_CHECKING, Any, ClassVar

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, Session, syntax

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
# A dot line next to a bare CR or LF: an end of data for a lax receiver (SMTP smuggling).
# <CRLF>.<CRLF> itself cannot occur inside the data, and stuffed dots are doubled.
SMUGGLED_END_RE = re.compile(rb"[\r\n]\.[\r\n]")
# Unknown commands and syntax errors. Not 503 (bad sequence): a pipelining client sends
# RCPT and DATA after a refused MAIL or RCPT as RFC 2920 allows, and gets 503 for them.
PROTOCOL_ERROR_CODES = ("500", "501", "502", "504")
PREGREET_KEPT = 200  # octets of pre-greeting talk kept for the log
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
# aiosmtpd answers the 5th unknown command with a 502 and hangs up; Postwall counts every
# refused command against limits.max_errors and closes with a 421 (RFC 5321 3.8).
aiosmtpd.smtp.BOGUS_LIMIT = 1 << 30

LINGER_SECONDS = 5.0
ENHANCED_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")
# Enhanced status codes (RFC 3463) for the replies aiosmtpd writes without one.
DEFAULT_ENHANCED = {
    "250": "2.0.0", "221": "2.0.0", "252": "2.5.0", "421": "4.3.0", "451": "4.3.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "454": "4.7.0", "530": "5.7.0", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0",
    "555": "5.5.4",
}


class PostwallSession(Session):
    """aiosmtpd's session plus our typed state (never a dict keyed by peer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.conn: ConnectionContext | None = None
        self.tx: TransactionContext | None = None
        self.downstream: DownstreamTransaction | None = None
        self.errors = 0
        self.commands = 0
        self.tx_aborted_in_data = False
        # For the penalty box: unknown commands and syntax errors; a close for
        # too many errors; messages carrying an SMTP smuggling end-of-data sequence.
        self.protocol_errors = 0
        self.closed_for_errors = False
        self.smuggling = 0


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
            **kwargs,
        )
        # aiosmtpd keeps these on the class (512 octets); ours come from the configuration.
        self.command_size_limit = config.limits.max_command_length
        self.command_size_limits = collections.defaultdict(
            lambda: config.limits.max_command_length
        )
        self._smtp_methods = {
            name: self._counting(method)
            for name, method in self._smtp_methods.items()
            if name != "AUTH"  # a gateway for other MTAs offers no AUTH
        }
        self._lingering = False
        self._in_data = False
        self._judging = False  # a received message is being judged and relayed
        self.runtime = runtime
        self.listener = listener
        self.peer_ip_text = ""
        self._session_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self.limit_exceeded: str | None = None
        # Set while the greeting is held back: what the client sends then is kept aside.
        self._pregreet: bytearray | None = None
        self._pregreet_seen: asyncio.Event | None = None
        self._connect_judged = False  # on_connect has answered (greeting or refusal)
        self._connected_at = 0.0

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
            self.session.protocol_errors = previous.protocol_errors
            self.session.smuggling = previous.smuggling
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
            self._connected_at = self.loop.time()

    def connection_lost(self, error: Exception | None) -> None:
        if not self._connect_judged:
            # During the connect checks or the greeting delay: nothing to log but this.
            log.info("peer=%s disconnected before the greeting, after %.1fs",
                     self.peer_ip_text, self.loop.time() - self._connected_at)
            self._connect_judged = True
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        session = self.session
        if session is not None and session.downstream is not None:
            # The client vanished: close the downstream before DATA completes, so nothing
            # half-received is ever delivered.
            session.downstream.discard_now()
            session.downstream = None
        if session is not None and session.tx is not None:
            tx, session.tx = session.tx, None
            in_data = self._in_data or session.tx_aborted_in_data
            reason = "disconnect during DATA" if in_data else "client disconnected"
            self.runtime.log_transaction(tx, None, 0.0, None, None, reason)
        if self._counted:
            self._counted = False
            self.runtime.session_closed(self)
        super().connection_lost(error)

    def _session_expired(self) -> None:
        self._session_timer = None
        self.close_with(replies.SESSION_TIMEOUT)

    def close_with(self, reply: Reply) -> None:
        """Send a final reply and hang up without losing it.

        Closing a socket with unread input makes the kernel reset the connection and drop
        what was not yet sent, the 421 included. So: stop answering, send the reply and a
        FIN, then read and discard whatever the client still sends until it closes too
        (or LINGER_SECONDS pass)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        self._lingering = True
        self._reader._buffer.clear()  # type: ignore[attr-defined]  # unanswered commands
        transport.write(f"{reply}\r\n".encode())
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:  # TLS cannot half-close
            transport.close()

    def close_for_maintenance(self) -> bool:
        """Close with 421 now unless a message is being received or judged (that one
        gets its answer first: 451 at its end of data, or the judged reply). True if
        the session was closed now."""
        if self._in_data or self._judging:
            return False
        self.close_with(self.runtime.maintenance_reply())
        return True

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._pregreet is not None:
            # Talk before the greeting is never read as commands (postscreen's pregreet).
            if len(self._pregreet) < PREGREET_KEPT:
                self._pregreet += data[: PREGREET_KEPT - len(self._pregreet)]
            if self._pregreet_seen is not None:
                self._pregreet_seen.set()
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._lingering or not self._connect_judged:
            # Lingering after a final reply, or the client left before the greeting (while
            # the connect checks or the greeting delay ran): nothing more to say or read.
            if self.transport is not None:
                self.transport.close()
            return False
        return super().eof_received()

    def _counting(self, method: Any) -> Any:
        @functools.wraps(method)  # keeps aiosmtpd's syntax attributes for HELP
        async def counted(arg: str | None) -> None:
            if self.runtime.maintenance and method.__name__ != "smtp_DATA":
                self.close_with(self.runtime.maintenance_reply())
                return
            self.session.commands += 1
            if self.session.commands > self.runtime.config.limits.max_commands:
                self.close_with(replies.TOO_MANY_COMMANDS)
                return
            await method(arg)

        return counted

    async def wait_before_greeting(self, delay: float) -> bytes:
        """Hold the greeting back for `delay` seconds; return what the client sent
        before the greeting (b"" for a polite client), as soon as it sends anything.
        Those octets are taken out of the input, so they are never read as commands."""
        reader_buffer = self._reader._buffer  # type: ignore[attr-defined]
        # Talk that arrived while the connect checks ran is already in the reader.
        early = bytearray(reader_buffer[:PREGREET_KEPT])
        reader_buffer.clear()
        if not early:
            self._pregreet = early
            self._pregreet_seen = asyncio.Event()
            try:
                async with asyncio.timeout(delay):
                    await self._pregreet_seen.wait()
            except TimeoutError:
                pass
            finally:
                self._pregreet, self._pregreet_seen = None, None
        if early:
            log.info("peer=%s talked before the greeting: %r", self.peer_ip_text,
                     bytes(early[:80]))
        return bytes(early)

    async def _handle_client(self) -> None:
        refusal = await self.event_handler.on_connect(self)
        self._connect_judged = True
        if refusal is not None:
            self.close_with(refusal)
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        if self._lingering:
            return
        text = status if isinstance(status, str) else status.decode("ascii", "replace")
        text = self._with_enhanced_code(text)
        if not text.isprintable() and "\r\n" not in text:
            # aiosmtpd echoes unknown commands back: never echo control characters.
            text = "".join(c if c.isprintable() else "?" for c in text)
        if text[:3] in PROTOCOL_ERROR_CODES:
            self.session.protocol_errors += 1
        # A policy deferral (4.7.x: greylisting, rate limits) is not the client's error:
        # a mail server greylisted for many recipients must not be disconnected for it.
        if text[:1] in ("4", "5") and not text.startswith("421") and text[4:8] != "4.7.":
            self.session.errors += 1
            if self.session.errors > self.runtime.config.limits.max_errors:
                await super().push(text)
                self.session.closed_for_errors = True
                self.close_with(replies.TOO_MANY_ERRORS)
                return
        await super().push(text)

    def _with_enhanced_code(self, text: str) -> str:
        code = text[:3]
        if text[3:4] != " " or code in ("220", "354") or ENHANCED_RE.match(text, 4):
            return text
        if code == "250" and text[4:] == self.hostname:  # the HELO reply carries none
            return text
        enhanced = DEFAULT_ENHANCED.get(code)
        if enhanced is None:
            return text
        message = text[4:]
        if message.startswith("Error: "):
            message = message[7:]
        return f"{code} {enhanced} {message}"

    async def handle_exception(self, error: Exception) -> str:
        session = self.session
        tx = session.tx if session else None
        conn = session.conn if session else None
        ident = tx.id if tx else (conn.id if conn else "-")
        log.error("id=%s peer=%s unexpected error", ident, self.peer_ip_text, exc_info=error)
        self.runtime.count_error("exception")
        return str(replies.LOCAL_ERROR)

    # -- commands ------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, without the typing.Protocol class it defines on
        every call (4% of a worker's CPU)."""
        if not arg:
            return "", ""
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr: str = address.addr_spec
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and SOURCE_ROUTE_RE.match(arg.partition(":")[2] if ":" in arg else arg):
            await self.push(str(replies.SOURCE_ROUTE))
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.runtime.maintenance:
            await self.event_handler.abort_transaction(
                self, "maintenance", replies.MAINTENANCE_DATA
            )
            await self.push(str(replies.MAINTENANCE_DATA))
            self.close_with(self.runtime.maintenance_reply())
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limits = self.runtime.config.limits
        self._in_data = True
        try:
            await self._receive_data(limits)
        except asyncio.CancelledError:
            # The client vanished mid-DATA; connection_lost logs the transaction.
            self.session.tx_aborted_in_data = True
            raise
        if self.runtime.maintenance:
            self.close_with(self.runtime.maintenance_reply())

    async def _receive_data(self, limits: Any) -> None:
        try:
            async with asyncio.timeout(limits.data_timeout):
                raw = await self._read_data(limits.max_message_size)
            if raw is None:
                # EOF mid-DATA (normally aiosmtpd cancels this task first and
                # connection_lost logs it): nothing of this message is delivered.
                await self.event_handler.abort_transaction(self, "disconnect during DATA")
                if self.transport is not None:
                    self.transport.close()
                return
            content = self._check_and_unstuff(raw)
            if self.runtime.maintenance:
                raise DataError(replies.MAINTENANCE_DATA)
        except TimeoutError:
            await self.event_handler.abort_transaction(
                self, "data timeout", replies.DATA_TIMEOUT
            )
            self.close_with(replies.DATA_TIMEOUT)
            return
        except DataError as exc:
            await self.event_handler.abort_transaction(self, exc.reply.text, exc.reply)
            self._set_post_data_state()
            await self.push(str(exc.reply))
            return
        finally:
            self._in_data = False
        self.envelope.content = content
        self.envelope.original_content = content
        self._judging = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._judging = False
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
            if SMUGGLED_END_RE.search(raw):
                self.session.smuggling += 1
            if self.runtime.config.smtp.bare_line_ends == "reject":
                raise DataError(replies.BARE_LINE_END)
            content = ANY_LINE_END_RE.sub(b"\r\n", content)
        return content
