"""Rate limits per client (IPv4 address or IPv6 /64), counted across all workers in the
shared rate windows (`appliance.smtp.rates`): connections per minute at connect, and
transactions per hour at MAIL. Both share the settings section `filters.rate_limits`.

`postwall analyze` (a dry run) only reads the current rates; it counts nothing.
"""

from __future__ import annotations

import time
from typing import ClassVar

from appliance.config.schema import RateLimitSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.lists import IPIndex
from appliance.smtp.rates import CONNECTIONS, MESSAGES, Meter
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

CONNECTION_RATE_EXCEEDED = Reply(
    421, "4.7.0", "Too many connections from your address per minute, try later"
)
MESSAGE_RATE_EXCEEDED = Reply(
    451, "4.7.1", "Too many messages from your address per hour, try later"
)


class _RateFilter(Filter):
    section: ClassVar[str] = "rate_limits"
    meter: ClassVar[Meter]
    symbol: ClassVar[str]
    reply: ClassVar[Reply]
    count_refused: ClassVar[bool]

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, RateLimitSettings)
        self.limit = self.limit_of(settings)
        self.exempt = IPIndex(settings.exempt_networks, "rate_limits.exempt_networks")

    @staticmethod
    def limit_of(settings: RateLimitSettings) -> int:
        raise NotImplementedError

    async def check(self, ctx: TransactionContext) -> Verdict:
        state = self.services.clients
        connection = ctx.connection
        if (
            self.limit <= 0
            or state is None
            or state.is_exempt(connection)
            or (self.exempt and self.exempt.match(connection.peer_ip) is not None)
        ):
            return NO_FINDINGS
        key = state.key_of(connection)
        now = time.time()
        if self.services.dry_run:
            rate = state.rates.peek(self.meter, key, now)
            allowed = rate + 1 <= self.limit
        else:
            result = state.rates.hit(
                self.meter, key, self.limit, now, count_refused=self.count_refused
            )
            rate, allowed = result.rate, result.allowed
        if allowed:
            return NO_FINDINGS
        reason = f"{key}: {rate:.0f} {self.meter.name} (limit {self.limit})"
        return self.tempfail(self.symbol, reason, self.reply)


class ConnectionRateFilter(_RateFilter):
    """Connections per client per minute; over the limit 421 4.7.0 at connect. Refused
    attempts count too: a client must slow down, not merely retry, to get in."""

    name: ClassVar[str] = "connection_rate"
    stage: ClassVar[Stage] = Stage.CONNECT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("CONNECTION_RATE", 3.0, "Client exceeded rate_limits.connections_per_minute"),
    )
    meter: ClassVar[Meter] = CONNECTIONS
    symbol: ClassVar[str] = "CONNECTION_RATE"
    reply: ClassVar[Reply] = CONNECTION_RATE_EXCEEDED
    count_refused: ClassVar[bool] = True

    @staticmethod
    def limit_of(settings: RateLimitSettings) -> int:
        return settings.connections_per_minute


class MessageRateFilter(_RateFilter):
    """Transactions (MAIL FROM) per client per hour; over the limit 451 4.7.1 at MAIL.
    Runs before the sender lists: the limit is the client's, whoever it claims to be."""

    name: ClassVar[str] = "message_rate"
    stage: ClassVar[Stage] = Stage.MAIL
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("MESSAGE_RATE", 3.0, "Client exceeded rate_limits.messages_per_hour"),
    )
    meter: ClassVar[Meter] = MESSAGES
    symbol: ClassVar[str] = "MESSAGE_RATE"
    reply: ClassVar[Reply] = MESSAGE_RATE_EXCEEDED
    count_refused: ClassVar[bool] = False

    @staticmethod
    def limit_of(settings: RateLimitSettings) -> int:
        return settings.messages_per_hour
