"""Recipient verification at RCPT: an unknown user in a local domain gets 550 5.1.1
before anything else is asked about it (greylisting included), and a client that
guesses many addresses (directory harvesting) is cut off with 421 and penalised.

The method is chosen per domain (see `appliance.recipients.verifier`). Verification is
not a spam rule: it runs for whitelisted senders and in test mode too (its finals are
forced), since the internal server would refuse the recipient anyway and Postfix would
then send a bounce to a possibly forged sender. Mode score only records what it found.
postmaster@ of every local domain is always accepted (RFC 5321 4.5.1)."""

from __future__ import annotations

import logging
from typing import ClassVar

from appliance.config.schema import RecipientVerifySettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.netblock import client_key
from appliance.recipients.result import Existence
from appliance.recipients.verifier import RecipientVerifier, build_plan
from appliance.verdict import (
    NO_FINDINGS,
    Decision,
    Final,
    Mode,
    OnError,
    Reply,
    Stage,
    SymbolSpec,
    Verdict,
)

log = logging.getLogger("postwall.recipients")

UNKNOWN = "RCPT_UNKNOWN"
UNAVAILABLE = "RCPT_VERIFY_UNAVAILABLE"
HARVEST = "RCPT_HARVEST"


def unknown_reply(address: str) -> Reply:
    return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")


def unavailable_reply(address: str) -> Reply:
    return Reply(451, "4.4.3", f"<{address}>: Recipient address verification unavailable, "
                               "try again later")


HARVEST_REPLY = Reply(421, "4.7.0", "Too many unknown recipients, closing connection")


class RecipientVerifyFilter(Filter):
    name: ClassVar[str] = "recipient_verify"
    stage: ClassVar[Stage] = Stage.RCPT
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec(UNKNOWN, 0.0, "Recipient does not exist in its local domain (recipient "
                   "verification): 550 5.1.1"),
        SymbolSpec(UNAVAILABLE, 0.0, "The recipient could not be verified (callout target "
                   "or LDAP down, timeout, 4xx): the domain's on_unavailable applied"),
        SymbolSpec(HARVEST, 0.0, "Too many unknown recipients from this client (directory "
                   "harvest): 421 and the connection closed"),
    )
    overrides_accept: ClassVar[bool] = True  # a whitelisted sender cannot reach a non-user
    waits_on_network: ClassVar[bool] = True  # callout and LDAP
    # A crash is a bug, not an answer about the recipient: the sender retries later.
    default_on_error: ClassVar[OnError] = OnError.TEMPFAIL

    def setup(self) -> None:
        settings = self.settings
        assert isinstance(settings, RecipientVerifySettings)
        self.harvest = settings.harvest
        self.plan = build_plan(settings, self.config.smtp.hostname)
        domains = self.config.local_domains
        self.local_exact = frozenset(d for d in domains if not d.startswith("*."))
        self.local_suffixes = tuple(d[1:] for d in domains if d.startswith("*."))
        shared = getattr(self.services, "recipient_verifier", None)
        self.verifier: RecipientVerifier = shared if shared is not None else RecipientVerifier()
        self.verifier.configure(settings)

    async def check(self, ctx: TransactionContext) -> Verdict:
        rcpt = ctx.current_rcpt
        if rcpt is None:
            return NO_FINDINGS
        # A BATV tag stripped or an SRS address reversed: verify the address relayed.
        address = rcpt.relay_address or rcpt.address
        local, _, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if domain not in self.local_exact and not domain.endswith(self.local_suffixes):
            return NO_FINDINGS  # a bounce to an SRS address goes back to an outside sender
        if local.lower() in self.plan.always_accept:
            return NO_FINDINGS
        plan = self.plan.for_domain(domain)
        if plan.method == "none":
            return NO_FINDINGS
        lookup = await self.verifier.verify(plan, address, self.services.lists.get(
            "valid_recipients"))
        how = f"{plan.label}: {lookup.detail}" + (" (cached)" if lookup.cached else "")
        if lookup.existence is Existence.EXISTS:
            return NO_FINDINGS
        if lookup.existence is Existence.UNAVAILABLE:
            if plan.on_unavailable == "accept":
                log.warning("tx=%s recipient %s NOT verified, accepted (on_unavailable=accept"
                            " for %s): %s", ctx.id, address, plan.label, lookup.detail)
                return self.found(self.hit(UNAVAILABLE, f"accepted unverified; {how}"))
            log.warning("tx=%s recipient %s cannot be verified, 451 4.4.3 (on_unavailable="
                        "tempfail for %s): %s", ctx.id, address, plan.label, lookup.detail)
            return Verdict(final=Final(
                Decision.TEMPFAIL, self.hit(UNAVAILABLE, how), unavailable_reply(address),
                force=True,
            ))
        log.info("tx=%s peer=%s recipient %s unknown: %s", ctx.id, ctx.connection.peer_ip,
                 address, how)
        harvesting = self._harvesting(ctx)
        if harvesting is not None:
            log.warning("tx=%s peer=%s directory harvest: %s; closing the connection",
                        ctx.id, ctx.connection.peer_ip, harvesting)
            return Verdict(final=Final(
                Decision.TEMPFAIL, self.hit(HARVEST, harvesting), HARVEST_REPLY, force=True
            ))
        return self.reject(UNKNOWN, how, unknown_reply(address), force=True)

    def _harvesting(self, ctx: TransactionContext) -> str | None:
        """Count this unknown recipient; the reason when the client is over a limit."""
        conn = ctx.connection
        clients = self.services.clients
        if self.services.dry_run or self.mode is not Mode.BLOCK or (
            clients is not None and clients.is_exempt(conn)
        ):
            return None
        conn.unknown_recipients += 1
        limits = self.harvest
        per_client = 0
        if limits.max_unknown_per_client:
            key = conn.client_key or client_key(conn.peer_ip)
            per_client = self.verifier.harvest.add(
                key, limits.window, limits.max_unknown_per_client + 1
            )
        if limits.max_unknown_per_connection and (
            conn.unknown_recipients > limits.max_unknown_per_connection
        ):
            return (f"{conn.unknown_recipients} unknown recipients in this connection "
                    f"(limit {limits.max_unknown_per_connection})")
        if limits.max_unknown_per_client and per_client > limits.max_unknown_per_client:
            return (f"{per_client} unknown recipients from this client within "
                    f"{limits.window:g}s (limit {limits.max_unknown_per_client})")
        return None
