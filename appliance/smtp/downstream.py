"""The in-line relay to the local Postfix: one downstream transaction per client
transaction, its replies passed back to the client.

Connections are pooled per worker and reset with RSET between transactions, so a busy
gateway does not pay a connect and EHLO for every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from appliance.config.schema import DownstreamSettings
from appliance.smtp import replies
from appliance.smtp.client import ServerReply, SMTPClientError, SMTPConnection
from appliance.verdict import Reply

log = logging.getLogger("postwall.downstream")

ENHANCED_PREFIXES = ("2.", "4.", "5.")


def reply_from(response: ServerReply) -> Reply:
    """A downstream answer as a single-line Reply, keeping its enhanced status code."""
    code = response.code
    if not 200 <= code <= 599:
        return replies.DOWNSTREAM_FAILED
    text = " ".join(response.text.split()) or "no text"
    enhanced, _, rest = text.partition(" ")
    if enhanced[:2] in ENHANCED_PREFIXES and enhanced.count(".") == 2 and rest:
        return Reply(code, enhanced, rest[:400])
    default_enhanced = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}[code // 100]
    return Reply(code, default_enhanced, text[:400])


class DownstreamError(Exception):
    """The downstream could not be reached or broke off; the client gets a 4xx."""

    def __init__(self, reply: Reply, detail: str) -> None:
        super().__init__(detail)
        self.reply = reply


@dataclass(slots=True)
class _Idle:
    connection: SMTPConnection
    since: float


class DownstreamPool:
    def __init__(self, settings: DownstreamSettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = helo_name
        self._idle: deque[_Idle] = deque()
        self.connects = 0

    async def acquire(self) -> tuple[SMTPConnection, bool]:
        """A connected client and whether it was reused from the pool."""
        now = time.monotonic()
        while self._idle:
            idle = self._idle.pop()
            if now - idle.since < self.settings.pool_idle_seconds and idle.connection.is_open:
                return idle.connection, True
            idle.connection.close()
        try:
            connection = await SMTPConnection.open(
                self.settings.host, self.settings.port, helo=self.helo_name,
                connect_timeout=self.settings.connect_timeout,
                reply_timeout=self.settings.timeout,
            )
        except SMTPClientError as exc:
            raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, str(exc)) from exc
        self.connects += 1
        return connection, False

    def release(self, connection: SMTPConnection, reusable: bool) -> None:
        if reusable and connection.is_open and len(self._idle) < self.settings.pool_size:
            self._idle.append(_Idle(connection, time.monotonic()))
        else:
            connection.close()

    def drop_idle(self) -> None:
        while self._idle:
            self._idle.pop().connection.close()

    def prune(self) -> None:
        now = time.monotonic()
        fresh: deque[_Idle] = deque()
        for idle in self._idle:
            if now - idle.since < self.settings.pool_idle_seconds and idle.connection.is_open:
                fresh.append(idle)
            else:
                idle.connection.close()
        self._idle = fresh

    async def close(self) -> None:
        while self._idle:
            idle = self._idle.pop()
            try:
                await asyncio.wait_for(idle.connection.quit(), 2)
            except (SMTPClientError, TimeoutError, OSError):
                idle.connection.close()


class DownstreamTransaction:
    """MAIL, RCPT and DATA relayed while the client waits."""

    def __init__(self, pool: DownstreamPool) -> None:
        self.pool = pool
        self.connection: SMTPConnection | None = None
        self.recipients: list[str] = []

    @property
    def active(self) -> bool:
        return self.connection is not None

    async def begin(self, sender: str, options: list[str], recipient: str) -> Reply:
        """Open the transaction with its first recipient; the reply is for that RCPT (or
        the MAIL refusal). A stale pooled connection is retried once on a fresh one."""
        for _attempt in range(2):
            connection, reused = await self.pool.acquire()
            try:
                mail, rcpt = await connection.mail_rcpt(sender, options, recipient)
            except SMTPClientError as exc:
                self.pool.release(connection, reusable=False)
                if reused:
                    continue
                raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, f"MAIL: {exc}") from exc
            if mail.code != 250 or rcpt is None:
                await self._reset_and_release(connection)
                return reply_from(mail)
            self.connection = connection
            if rcpt.code in (250, 251):
                self.recipients.append(recipient)
            return reply_from(rcpt)
        raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, "MAIL: pooled connections stale")

    async def add_recipient(self, recipient: str) -> Reply:
        assert self.connection is not None
        try:
            response = await self.connection.rcpt(recipient)
        except SMTPClientError as exc:
            self._drop()
            raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, f"RCPT: {exc}") from exc
        if response.code in (250, 251):
            self.recipients.append(recipient)
        return reply_from(response)

    async def send(self, content: bytes) -> Reply:
        """DATA and the message; the reply is what the client will hear."""
        connection, self.connection = self.connection, None
        assert connection is not None
        try:
            response = await connection.data(content)
        except SMTPClientError as exc:
            self.pool.release(connection, reusable=False)
            raise DownstreamError(replies.DOWNSTREAM_FAILED, f"DATA: {exc}") from exc
        if response.code == 354 or 300 <= response.code < 400:
            self.pool.release(connection, reusable=False)
            return replies.DOWNSTREAM_FAILED
        if response.code != 250:
            # A refusal of DATA leaves the transaction open downstream: reset it.
            await self._reset_and_release(connection)
        else:
            self.pool.release(connection, reusable=True)
        return reply_from(response)

    async def abort(self) -> None:
        """Forget the transaction downstream (RSET) and give the connection back."""
        connection, self.connection = self.connection, None
        if connection is not None:
            await self._reset_and_release(connection)

    async def _reset_and_release(self, connection: SMTPConnection) -> None:
        try:
            response = await connection.rset()
        except SMTPClientError:
            self.pool.release(connection, reusable=False)
            return
        self.pool.release(connection, reusable=response.code == 250)

    def _drop(self) -> None:
        if self.connection is not None:
            self.pool.release(self.connection, reusable=False)
            self.connection = None

    def discard_now(self) -> None:
        """Close without a round trip (the client vanished): closing before DATA completes
        guarantees the downstream delivers nothing of this transaction."""
        self._drop()
