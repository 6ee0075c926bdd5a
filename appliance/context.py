"""Typed per-connection and per-transaction state shared by the SMTP adapter and the filters."""

from __future__ import annotations

import ipaddress
import itertools
import os
import time
from dataclasses import dataclass, field
from email.message import Message
from enum import StrEnum
from functools import cached_property

from appliance.authresults import AuthResults
from appliance.verdict import Final, Symbol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Listener(StrEnum):
    INBOUND = "inbound"  # the internet-facing port 25
    RELAY = "relay"  # outgoing mail from the internal mail server


_SEQUENCE = itertools.count()


def new_id() -> str:
    """A sortable id, unique across the workers of one appliance: time in ms, the process
    and a per-process sequence (cheaper than asking the kernel for randomness, which the
    hot path did several times per message)."""
    return f"{int(time.time() * 1000):011x}{os.getpid() & 0xFFFF:04x}{next(_SEQUENCE) & 0xFFFF:04x}"


@dataclass(slots=True)
class ConnectionContext:
    peer_ip: IPAddress
    peer_port: int
    listener: Listener
    id: str = field(default_factory=new_id)
    started_at: float = field(default_factory=time.time)
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    transactions: int = 0
    # Results of connect/helo-stage checks, carried into every transaction.
    symbols: list[Symbol] = field(default_factory=list)
    final: Final | None = None
    accepted_by: str | None = None  # a connect-stage allow list exempts every transaction
    # What the client sent before the greeting (None: no greeting delay was applied).
    pregreet: bytes | None = None
    # Worked out once per connection by appliance.client_state: the key of the client's
    # penalty score and rates, and whether it is trusted (relay listener or networks,
    # ip_allow) and so exempt from those checks and from greylisting.
    client_key: str | None = None
    trusted: bool | None = None
    # The address the client connected to (one of ours), for checks of forged HELO names.
    local_ip: IPAddress | None = None
    # Symbols added by the latest HELO/EHLO, replaced when the client says HELO again.
    helo_symbols: tuple[Symbol, ...] = ()
    # The client's reverse DNS (fcrdns filter): the PTR name (the confirmed one if any),
    # and whether it resolves back to peer_ip. None: not looked up, or DNS failed.
    ptr_name: str | None = None
    fcrdns: bool | None = None
    # Recipients refused as unknown by recipient verification (directory harvesting).
    unknown_recipients: int = 0

    @property
    def is_relay(self) -> bool:
        return self.listener is Listener.RELAY


@dataclass(slots=True)
class RecipientContext:
    """The recipient a rcpt-stage filter is judging; `address` is not yet in `rcpt_tos`."""

    address: str
    options: tuple[str, ...] = ()
    # The address to relay downstream instead, when a check rewrote it (a BATV tag
    # stripped, an SRS address reversed); None relays `address` as given.
    relay_address: str | None = None


@dataclass
class TransactionContext:
    connection: ConnectionContext
    mail_from: str = ""  # "" is the null sender <>
    mail_options: tuple[str, ...] = ()
    rcpt_tos: list[str] = field(default_factory=list)
    current_rcpt: RecipientContext | None = None
    content: bytes | None = None  # exact octets after dot-unstuffing, CRLF line ends
    id: str = field(default_factory=new_id)
    started_at: float = field(default_factory=time.time)
    symbols: list[Symbol] = field(default_factory=list)
    final: Final | None = None
    # Which list made the message exempt from scoring (whitelist, noprocessing, ...).
    accepted_by: str | None = None
    # In test mode a block is remembered here and the message is tagged instead.
    blocked_in_test_mode: Final | None = None
    filter_errors: int = 0
    # Recipients refused at RCPT (by us or by Postfix) with the reply they got.
    rejected_recipients: list[tuple[str, str]] = field(default_factory=list)
    # Why those recipients were refused (GREYLISTED, PERSONAL_BLACKLIST, ...): shown in the
    # message log, never scored, so a refused recipient does not doom the others.
    refusal_symbols: list[Symbol] = field(default_factory=list)
    # SPF, DKIM and DMARC results, for DMARC and the Authentication-Results header.
    auth: AuthResults = field(default_factory=AuthResults)
    # Command addresses (spam@, help@, ...) accepted at RCPT: the mail is consumed.
    command_rcpts: list[str] = field(default_factory=list)
    # The envelope sender relayed downstream when a check rewrote it (BATV tag, SRS);
    # None relays `mail_from` as given. `relay_sender` is the one to use.
    downstream_sender: str | None = None
    # Recipients relayed under another address than the client gave: relayed -> given.
    rewritten_rcpts: dict[str, str] = field(default_factory=dict)
    # Relayed recipients (lower case) whose BATV tag or SRS address validated: bounces
    # to them are genuine.
    validated_bounce_rcpts: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else 0

    @property
    def relay_sender(self) -> str:
        return self.mail_from if self.downstream_sender is None else self.downstream_sender

    @property
    def sender_domain(self) -> str:
        return self.mail_from.rpartition("@")[2].lower()

    @cached_property
    def message(self) -> Message:
        """The parsed message, built once on first use by any data-stage filter."""
        from appliance import mime

        if self.content is None:
            raise RuntimeError("message content is only available at the data stage")
        return mime.parse(self.content)
