"""Method callout: ask the internal mail server whether a mailbox exists, in a probe
session that never sends a message.

rcpt: ``MAIL FROM:<>`` (a null sender, so no server sends a bounce back), ``RCPT
TO:<address>``, then ``RSET``; vrfy: ``VRFY address``. Idle probe sessions are kept for
the next lookups (RSET between them), so one connection probes many recipients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from appliance.recipients.result import Existence, Lookup, VerifierUnavailable
from appliance.smtp.client import ServerReply, SMTPClientError, SMTPConnection

log = logging.getLogger("postwall.recipients")

NOT_IMPLEMENTED = (500, 502, 504)  # VRFY switched off: the method cannot work


@dataclass(frozen=True, slots=True)
class CalloutTarget:
    host: str
    port: int
    command: str  # "rcpt" or "vrfy"
    timeout: float
    helo: str
    max_idle: int
    idle_seconds: float

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def _said(reply: ServerReply) -> str:
    return f"{reply.code} {' '.join(reply.text.split())}"[:200]


class CalloutClient:
    """Probe sessions to one target, reused while idle."""

    def __init__(self, target: CalloutTarget) -> None:
        self.target = target
        self._idle: deque[tuple[SMTPConnection, float]] = deque()
        self.connects = 0
        self.last_used = time.monotonic()

    async def _open(self) -> SMTPConnection:
        target = self.target
        self.connects += 1
        try:
            return await SMTPConnection.open(
                target.host, target.port, helo=target.helo,
                connect_timeout=target.timeout, reply_timeout=target.timeout,
            )
        except SMTPClientError as exc:
            raise VerifierUnavailable(f"callout {target.name}: {exc}") from None

    def _take_idle(self) -> SMTPConnection | None:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if connection.is_open and now - since < self.target.idle_seconds:
                return connection
            connection.close()
        return None

    def _give_back(self, connection: SMTPConnection) -> None:
        if connection.is_open and len(self._idle) < self.target.max_idle:
            self._idle.append((connection, time.monotonic()))
        else:
            connection.close()

    async def probe(self, address: str) -> Lookup:
        """EXISTS or UNKNOWN; raises VerifierUnavailable when the server cannot say."""
        self.last_used = time.monotonic()
        connection = self._take_idle()
        reused = connection is not None
        if connection is None:
            connection = await self._open()
        try:
            try:
                lookup = await self._ask(connection, address)
            except SMTPClientError:
                if not reused:
                    raise
                # The server closed an idle session meanwhile: once more on a fresh one.
                connection.close()
                connection = await self._open()
                lookup = await self._ask(connection, address)
        except SMTPClientError as exc:
            connection.close()
            raise VerifierUnavailable(f"callout {self.target.name}: {exc}") from None
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return lookup

    async def _ask(self, connection: SMTPConnection, address: str) -> Lookup:
        name = self.target.name
        if self.target.command == "vrfy":
            reply = await connection.command(f"VRFY {address}")
            if reply.code in NOT_IMPLEMENTED:
                raise VerifierUnavailable(f"callout {name}: VRFY refused ({_said(reply)}); "
                                          "use command: rcpt")
            return self._judge(reply, "VRFY")
        mail, rcpt = await connection.mail_rcpt("", [], address)
        if rcpt is None:
            await self._reset(connection)
            raise VerifierUnavailable(f"callout {name}: MAIL FROM:<> refused ({_said(mail)})")
        await self._reset(connection)
        return self._judge(rcpt, "RCPT")

    async def _reset(self, connection: SMTPConnection) -> None:
        reply = await connection.rset()
        if reply.code != 250:
            connection.close()  # never reuse a session in an unknown state

    def _judge(self, reply: ServerReply, command: str) -> Lookup:
        detail = f"callout {self.target.name} {command}: {_said(reply)}"
        if 200 <= reply.code < 300:  # 250, 251 and VRFY's 252 ("cannot verify, will accept")
            return Lookup(Existence.EXISTS, detail)
        if 500 <= reply.code < 600:
            return Lookup(Existence.UNKNOWN, detail)
        raise VerifierUnavailable(detail)  # 4xx (or nonsense): ask again later

    def close_now(self) -> None:
        """Drop the idle sessions without QUIT (the server times them out anyway)."""
        while self._idle:
            self._idle.pop()[0].close()

    async def close(self) -> None:
        while self._idle:
            connection, _ = self._idle.pop()
            try:
                async with asyncio.timeout(1.0):
                    await connection.quit()
            except (SMTPClientError, TimeoutError, OSError):
                connection.close()
