"""Greylisting at RCPT: the first attempt of a new (client network, sender, recipient)
triplet gets 451 4.7.1; a real mail server retries after the delay and passes.

Never greylisted: the relay listener (the pipeline skips it), relay_networks and
ip_allow clients, whitelisted and autowhitelisted senders, `pass_networks`, senders in
`pass_sender_domains`, and client networks that retried enough triplets before
(`auto_whitelist_after`). A dry run (`postwall analyze`) records nothing.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

from appliance.config.schema import GreylistSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.greylist import normalise_recipient, normalise_sender
from appliance.lists import IPIndex
from appliance.netblock import netblock
from appliance.verdict import NO_FINDINGS, Reply, Stage, SymbolSpec, Verdict

PASSED = "GREYLIST_PASSED"


def greylisted_reply(remaining: float) -> Reply:
    seconds = max(1, math.ceil(remaining))
    return Reply(451, "4.7.1", f"Greylisted: new sender for this recipient, please retry in "
                               f"{seconds} seconds (RFC 6647)")


class GreylistFilter(Filter):
    name: ClassVar[str] = "greylist"
    stage: ClassVar[Stage] = Stage.RCPT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("GREYLISTED", 0.0, "First delivery attempt of this client network, "
                   "sender and recipient: delayed (451 4.7.1)"),
        SymbolSpec(PASSED, 0.0, "Greylisting passed: retried after the delay, known, or "
                   "exempt (the reason says which)"),
    )
    # The database lookup for a triplet this worker has not seen waits on a thread.
    waits_on_network: ClassVar[bool] = True

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, GreylistSettings)
        self.ipv4_prefix = settings.ipv4_prefix
        self.ipv6_prefix = settings.ipv6_prefix
        self.pass_networks = IPIndex(settings.pass_networks, "greylist.pass_networks")
        domains = settings.pass_sender_domains
        self.pass_domains = frozenset(d for d in domains if not d.startswith("*."))
        self.pass_suffixes = tuple(d[1:] for d in domains if d.startswith("*."))
        self.null_sender_passes = settings.null_sender == "pass"

    async def check(self, ctx: TransactionContext) -> Verdict:
        state = self.services.clients
        if ctx.current_rcpt is None or state is None:
            return NO_FINDINGS
        exempt = self._exemption(ctx)
        if exempt is not None:
            return self._passed(ctx, exempt)
        ip = ctx.connection.peer_ip
        client_net = netblock(ip, self.ipv4_prefix, self.ipv6_prefix)
        greylist = state.greylist
        passes = greylist.client_whitelisted(client_net)
        if passes is not None:
            if not self.services.dry_run:
                greylist.client_used(client_net)
            return self._passed(ctx, f"{client_net} retried {passes} triplets before")
        sender = normalise_sender(ctx.mail_from)
        recipient = normalise_recipient(ctx.current_rcpt.address)
        if self.services.dry_run:
            verdict = await greylist.peek(client_net, sender, recipient)
        else:
            verdict = await greylist.check(client_net, sender, recipient)
        if verdict.passes:
            age = time.time() - verdict.first_seen
            return self._passed(ctx, f"{verdict.outcome.value}, first seen {age:.0f}s ago")
        reason = f"{client_net} {sender} -> {recipient}: {verdict.outcome.value}"
        return self.tempfail("GREYLISTED", reason, greylisted_reply(verdict.remaining))

    def _exemption(self, ctx: TransactionContext) -> str | None:
        conn = ctx.connection
        state = self.services.clients
        if state is not None and state.is_exempt(conn):
            return "trusted client"
        if self.pass_networks:
            network = self.pass_networks.match(conn.peer_ip)
            if network is not None:
                return f"client in pass_networks {network}"
        sender = ctx.mail_from
        if not sender:
            return "null sender" if self.null_sender_passes else None
        domain = ctx.sender_domain
        if domain in self.pass_domains or (
            self.pass_suffixes and domain.endswith(self.pass_suffixes)
        ):
            return f"sender domain {domain} in pass_sender_domains"
        lists = self.services.lists
        entry = lists.whitelist.match(sender)
        if entry is not None:
            return f"whitelisted sender ({entry})"
        entry = lists.autowhitelist.match(sender)
        if entry is not None:
            return f"autowhitelisted sender ({entry})"
        return None

    def _passed(self, ctx: TransactionContext, reason: str) -> Verdict:
        if any(symbol.name == PASSED for symbol in ctx.symbols):
            return NO_FINDINGS  # once per message is enough
        return self.found(self.hit(PASSED, reason))

