"""Sender validation at MAIL FROM on the inbound listener.

A sender whose domain cannot receive mail cannot receive a bounce or a reply either:
the domain does not exist (NXDOMAIN), has neither MX nor A/AAAA (RFC 5321 5.1: without
an MX the address record is the implicit MX), or says it takes no mail at all (null MX,
RFC 7505, which also asks receivers to refuse such senders with 550 5.7.27). A sender in
one of our own local domains arriving from the internet is forged, unless the client is
one of ours (relay_networks; ip_allow clients are accepted before this check runs).
The null sender `<>` (bounces) is never judged here. The SMTP layer has already refused
senders it cannot parse, with control characters, or non-ASCII without SMTPUTF8.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from appliance.config.schema import SenderSettings
from appliance.context import TransactionContext
from appliance.dns import DNSAnswer, DNSStatus
from appliance.domains import LocalDomains, domain_problem, printable, to_ascii
from appliance.filters.base import Filter
from appliance.verdict import NO_FINDINGS, OnError, Reply, Stage, SymbolSpec, Verdict

GROUP = "sender"

DOMAIN_NOT_FOUND = Reply(550, "5.1.8", "Sender address rejected: Domain not found")
DOMAIN_INVALID = Reply(553, "5.1.7", "Sender address rejected: Invalid domain")
NULL_MX = Reply(550, "5.7.27", "Sender address rejected: Domain does not accept mail (null MX)")
LOCAL_FORGED = Reply(550, "5.7.1", "Sender address rejected: Local domain used from outside")
LOOKUP_FAILED = Reply(451, "4.1.8", "Sender address rejected: Domain lookup failed, try later")


def is_null_mx(answer: DNSAnswer) -> bool:
    """RFC 7505: a single MX of preference 0 naming the root. A domain that mixes it with
    real exchanges is misconfigured; the real ones still take mail, so only a null MX
    alone counts."""
    hosts = answer.mx_hosts()
    return bool(hosts) and all(host in ("", ".") for _, host in hosts)


class SenderFilter(Filter):
    name: ClassVar[str] = "sender"
    stage: ClassVar[Stage] = Stage.MAIL
    waits_on_network: ClassVar[bool] = True
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("SENDER_DOMAIN_NXDOMAIN", 4.0, "The sender's domain does not exist",
                   GROUP),
        SymbolSpec("SENDER_DOMAIN_INVALID", 4.0,
                   "The sender address has no valid, fully qualified domain", GROUP),
        SymbolSpec("SENDER_NO_MX", 2.5,
                   "The sender's domain has neither MX nor A/AAAA records", GROUP),
        SymbolSpec("SENDER_NULL_MX", 4.0,
                   "The sender's domain publishes a null MX (RFC 7505): it takes no mail",
                   GROUP),
        SymbolSpec("SENDER_LOCAL_FORGED", 5.0,
                   "A sender in one of our local domains from a client outside our networks",
                   GROUP),
        SymbolSpec("SENDER_TEMPERROR", 0.0, "The DNS lookup of the sender's domain failed",
                   GROUP),
    )

    settings: SenderSettings

    def setup(self) -> None:
        self._local = LocalDomains.from_config(self.config.local_domains)
        self._our_networks = tuple(
            ipaddress.ip_network(n) for n in self.config.relay_networks
        )

    async def check(self, ctx: TransactionContext) -> Verdict:
        conn = ctx.connection
        sender = ctx.mail_from
        if conn.is_relay or not sender:
            return NO_FINDINGS
        shown = printable(sender)
        _, at, raw_domain = sender.rpartition("@")
        if not at or not raw_domain:
            return self._unknown("SENDER_DOMAIN_INVALID", f"{shown}: no domain", DOMAIN_INVALID)
        if raw_domain.startswith("["):
            return NO_FINDINGS  # an address literal names no domain to look up
        domain = to_ascii(raw_domain)
        problem = "not encodable as IDNA" if domain is None else domain_problem(domain)
        if domain is not None and problem is None and "." not in domain:
            problem = "not fully qualified"
        if domain is None or problem is not None:
            return self._unknown("SENDER_DOMAIN_INVALID", f"{shown}: {problem}", DOMAIN_INVALID)
        if self._local.contains(domain):
            if any(conn.peer_ip in net for net in self._our_networks):
                return NO_FINDINGS
            reason = f"{shown} from {conn.peer_ip}"
            if self.settings.reject_local_forged:
                return self.reject("SENDER_LOCAL_FORGED", reason, LOCAL_FORGED)
            return self.found(self.hit("SENDER_LOCAL_FORGED", reason))
        return await self._check_dns(domain)

    async def _check_dns(self, domain: str) -> Verdict:
        resolver = self.services.resolver
        if resolver is None:
            raise RuntimeError("no DNS resolver")
        mx = await resolver.mx(domain)
        if mx.ok:
            if is_null_mx(mx):
                if self.settings.reject_null_mx:
                    return self.reject("SENDER_NULL_MX", domain, NULL_MX)
                return self.found(self.hit("SENDER_NULL_MX", domain))
            return NO_FINDINGS
        if mx.status is DNSStatus.NXDOMAIN:
            return self._unknown("SENDER_DOMAIN_NXDOMAIN", domain, DOMAIN_NOT_FOUND)
        if mx.is_failure:
            return self._temperror(f"MX {domain}: {mx.status.value}")
        # No MX: the address records are the implicit MX (RFC 5321 5.1).
        addresses = await resolver.addresses(domain)
        if addresses.ok:
            return NO_FINDINGS
        if addresses.status is DNSStatus.NXDOMAIN:
            return self._unknown("SENDER_DOMAIN_NXDOMAIN", domain, DOMAIN_NOT_FOUND)
        if addresses.is_failure:
            return self._temperror(f"A/AAAA {domain}: {addresses.status.value}")
        return self.found(self.hit("SENDER_NO_MX", domain))

    def _unknown(self, name: str, reason: str, reply: Reply) -> Verdict:
        if self.settings.reject_unknown_domain:
            return self.reject(name, reason, reply)
        return self.found(self.hit(name, reason))

    def _temperror(self, reason: str) -> Verdict:
        if self.on_error is OnError.TEMPFAIL:
            return self.tempfail("SENDER_TEMPERROR", reason, LOOKUP_FAILED)
        return self.found(self.hit("SENDER_TEMPERROR", reason))
