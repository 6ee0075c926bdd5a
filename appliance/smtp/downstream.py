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

import aiosmtplib

from appliance.config.schema import DownstreamSettings
from appliance.smtp import replies
from appliance.verdict import Reply

log = logging.getLogger("postwall.downstream")

ENHANCED_PREFIXES = ("2.", "4.", "5.")


def reply_from(code: int, message: str) -> Reply:
    """A downstream answer as a single-line Reply, keeping its enhanced status code."""
    text = " ".join(message.split()) or "no text"
    enhanced, _, rest = text.partition(" ")
    if enhanced[:2] in ENHANCED_PREFIXES and enhanced.count(".") == 2 and rest:
        return Reply(code, enhanced, rest[:400])
    default_enhanced = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "")
    if not 200 <= code <= 599:
        return replies.DOWNSTREAM_FAILED
    return Reply(code, default_enhanced, text[:400])


class DownstreamError(Exception):
    """The downstream could not be reached or broke off; the client gets a 4xx."""

    def __init__(self, reply: Reply, detail: str) -> None:
        super().__init__(detail)
        self.reply = reply


@dataclass(slots=True)
class _Idle:
    client: aiosmtplib.SMTP
    since: float


class DownstreamPool:
    def __init__(self, settings: DownstreamSettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = helo_name
        self._idle: deque[_Idle] = deque()
        self.connects = 0

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client and whether it was reused from the pool."""
        now = time.monotonic()
        while self._idle:
            idle = self._idle.pop()
            if now - idle.since < self.settings.pool_idle_seconds and idle.client.is_connected:
                return idle.client, True
            self._close(idle.client)
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.settings.host,
            port=self.settings.port,
            timeout=self.settings.timeout,
            local_hostname=self.helo_name,
            start_tls=False,
            use_tls=False,
        )
        try:
            await client.connect(timeout=self.settings.connect_timeout)
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._close(client)
            raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, f"connect: {exc}") from exc
        self.connects += 1
        return client

    def release(self, client: aiosmtplib.SMTP, reusable: bool) -> None:
        if reusable and client.is_connected and len(self._idle) < self.settings.pool_size:
            self._idle.append(_Idle(client, time.monotonic()))
        else:
            self._close(client)

    def _close(self, client: aiosmtplib.SMTP) -> None:
        try:
            client.close()
        except Exception:  # closing a broken socket has nothing left to tell us
            log.debug("closing downstream connection failed", exc_info=True)

    def prune(self) -> None:
        now = time.monotonic()
        keep = deque(i for i in self._idle if now - i.since < self.settings.pool_idle_seconds)
        for idle in self._idle:
            if idle not in keep:
                self._close(idle.client)
        self._idle = keep

    async def close(self) -> None:
        while self._idle:
            idle = self._idle.pop()
            try:
                await asyncio.wait_for(idle.client.quit(), 2)
            except Exception:
                self._close(idle.client)


class DownstreamTransaction:
    """MAIL, RCPT and DATA relayed one by one while the client waits."""

    def __init__(self, pool: DownstreamPool) -> None:
        self.pool = pool
        self.client: aiosmtplib.SMTP | None = None
        self.recipients: list[str] = []
        self.started_at = time.monotonic()

    @property
    def active(self) -> bool:
        return self.client is not None

    async def begin(self, sender: str, options: list[str], utf8: bool) -> Reply:
        """Open the transaction; on a stale pooled connection retry once on a fresh one."""
        for _attempt in range(2):
            client, reused = await self.pool.acquire()
            try:
                response = await client.mail(
                    sender, options=options, encoding="utf-8" if utf8 else "ascii"
                )
            except aiosmtplib.SMTPSenderRefused as exc:
                self.pool.release(client, reusable=False)
                return reply_from(exc.code, exc.message)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                    ConnectionError) as exc:
                self.pool.release(client, reusable=False)
                if reused:
                    continue
                raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, f"MAIL: {exc}") from exc
            except aiosmtplib.SMTPResponseException as exc:
                self.pool.release(client, reusable=False)
                return reply_from(exc.code, exc.message)
            self.client = client
            return reply_from(response.code, response.message)
        raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, "MAIL: pooled connections stale")

    async def add_recipient(self, recipient: str, utf8: bool) -> Reply:
        assert self.client is not None
        try:
            response = await self.client.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
        except aiosmtplib.SMTPRecipientRefused as exc:
            return reply_from(exc.code, exc.message)
        except aiosmtplib.SMTPResponseException as exc:
            return reply_from(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise DownstreamError(replies.DOWNSTREAM_UNAVAILABLE, f"RCPT: {exc}") from exc
        self.recipients.append(recipient)
        return reply_from(response.code, response.message)

    async def send(self, content: bytes) -> Reply:
        """DATA and the message; the reply is what the client will hear."""
        assert self.client is not None
        client = self.client
        self.client = None
        try:
            response = await client.data(content)
        except aiosmtplib.SMTPDataError as exc:
            # Postfix refused the message but the session is intact (e.g. 552 size).
            self.pool.release(client, reusable=200 <= exc.code < 600)
            return reply_from(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.pool.release(client, reusable=False)
            raise DownstreamError(replies.DOWNSTREAM_FAILED, f"DATA: {exc}") from exc
        self.pool.release(client, reusable=True)
        return reply_from(response.code, response.message)

    async def abort(self) -> None:
        """Forget the transaction downstream (RSET) and give the connection back."""
        client = self.client
        self.client = None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.rset(), self.pool.settings.timeout)
        except Exception:
            self.pool.release(client, reusable=False)
            return
        self.pool.release(client, reusable=True)

    def _drop(self) -> None:
        if self.client is not None:
            self.pool.release(self.client, reusable=False)
            self.client = None

    def discard_now(self) -> None:
        """Close without a round trip (the client vanished; the downstream must not
        deliver a half transaction: closing before DATA completes guarantees that)."""
        self._drop()
