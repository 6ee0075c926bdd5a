"""Client IP allow and deny lists (CIDR), judged at connect on the inbound listener."""

from __future__ import annotations

from typing import ClassVar

from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

ACCESS_DENIED = Reply(554, "5.7.1", "Access denied")


class IPListFilter(Filter):
    """`ip_deny` refuses the client; `ip_allow` accepts its mail without scoring. When an
    address is in both, the more specific network wins (a tie denies), so an admin can
    allow one host inside a denied range or the other way round."""

    name: ClassVar[str] = "ip_lists"
    stage: ClassVar[Stage] = Stage.CONNECT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("IP_DENIED", 10.0, "Client address is in the IP deny list", "lists"),
        SymbolSpec("IP_ALLOWED", -10.0, "Client address is in the IP allow list", "lists"),
    )

    async def check(self, ctx: TransactionContext) -> Verdict:
        connection = ctx.connection
        if connection.is_relay:
            return NO_FINDINGS
        lists = self.services.lists
        denied = lists.ip_deny.match(connection.peer_ip)
        allowed = lists.ip_allow.match(connection.peer_ip)
        if denied is not None and (allowed is None or denied.prefixlen >= allowed.prefixlen):
            return self.reject(
                "IP_DENIED", f"{connection.peer_ip} in {denied}", ACCESS_DENIED
            )
        if allowed is not None:
            return self.accept("IP_ALLOWED", f"{connection.peer_ip} in {allowed}")
        return NO_FINDINGS
