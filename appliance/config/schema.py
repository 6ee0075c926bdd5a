"""Every setting of the appliance: its type, default and help text, in one place.

The web UI renders its configuration page from these models, `check-config` validates
against them, and unknown keys are errors that name their path.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.clamd import parse_address as parse_clamd_address
from appliance.verdict import Mode, OnError

DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?$", re.IGNORECASE
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port out of range in {value!r}")
    ipaddress.ip_address(host)  # listeners bind to addresses, never to names
    return host, int(port)


def parse_nameserver(entry: str) -> tuple[str, int]:
    """`127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]:5353` -> (address, port)."""
    text = entry.strip()
    port = 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {entry!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    ipaddress.ip_address(host)  # a name would need a resolver to find the resolver
    if not 0 < port < 65536:
        raise ValueError(f"bad port in nameserver {entry!r}")
    return host, port


class ListenSettings(Section):
    inbound: str = Field(
        "0.0.0.0:25",
        description="Internet-facing SMTP listener (ADDRESS:PORT). Mail here is judged.",
    )
    relay: str | None = Field(
        "0.0.0.0:225",
        description="Listener for outgoing mail from the internal mail server (ASSP relayPort). "
        "Only clients in relay_networks may use it; its mail is never spam-scored. "
        "Empty to disable.",
    )

    @field_validator("inbound", "relay")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        if value:
            parse_hostport(value)
        return value or None


class DownstreamSettings(Section):
    host: str = Field("127.0.0.1", description="The locked-down Postfix that relays accepted mail.")
    port: int = Field(125, ge=1, le=65535, description="Postfix smtpd port (ASSP smtpDestination).")
    timeout: float = Field(
        60.0,
        gt=0,
        le=600,
        description="Seconds to wait for any downstream reply; past it the client gets 451 and "
        "retries, so nothing is lost.",
    )
    connect_timeout: float = Field(10.0, gt=0, le=120, description="Seconds to connect.")
    pool_size: int = Field(
        32,
        ge=0,
        le=1000,
        description="Idle downstream connections kept per worker for reuse (RSET between "
        "transactions); 0 opens one connection per transaction.",
    )
    pool_idle_seconds: float = Field(
        30.0, gt=0, description="An idle pooled connection older than this is closed."
    )


class LimitSettings(Section):
    max_message_size: int = Field(
        20971520,
        ge=1024,
        description="Largest message accepted, in octets (advertised as SIZE, enforced with "
        "552). Postfix's message_size_limit must be larger.",
    )
    max_recipients: int = Field(
        100, ge=1, le=100000, description="Recipients per message; more get 452 4.5.3."
    )
    max_connections: int = Field(
        500, ge=1, description="Concurrent SMTP sessions per worker; beyond it 421 4.7.0."
    )
    max_connections_per_ip: int = Field(
        20, ge=1, description="Concurrent sessions from one client IP per worker; 421 4.7.0."
    )
    max_line_length: int = Field(
        10000,
        ge=1000,
        description="Longest line in DATA (octets, without CRLF). RFC 5321 allows 998; real "
        "senders exceed it a little, so the default is lenient. Longer lines get 500 5.5.2.",
    )
    max_command_length: int = Field(
        2048, ge=512, description="Longest SMTP command line; longer ones get 500 5.5.2."
    )
    max_commands: int = Field(
        1000,
        ge=10,
        description="Commands per session before it is closed with 421 (stops RCPT floods).",
    )
    max_errors: int = Field(
        20, ge=1, description="Bad or refused commands per session before 421 and disconnect."
    )
    max_transactions: int = Field(100, ge=1, description="Messages per session.")
    idle_timeout: float = Field(
        300.0, gt=0, description="Seconds a client may stay silent (RFC 5321 4.5.3.2: 5 min)."
    )
    data_timeout: float = Field(
        600.0, gt=0, description="Seconds to receive the whole DATA section of one message."
    )
    session_timeout: float = Field(
        1800.0, gt=0, description="Longest total session before it is closed with 421."
    )


class TLSSettings(Section):
    cert_file: Path | None = Field(None, description="PEM certificate chain; enables STARTTLS.")
    key_file: Path | None = Field(None, description="PEM private key (mode 0600).")

    @model_validator(mode="after")
    def _both_or_none(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        return self


class SMTPSettings(Section):
    hostname: str = Field(
        default_factory=socket.getfqdn,
        description="Name in the greeting and EHLO reply (ASSP myName); should match the PTR.",
    )
    banner: str = Field("ESMTP Postwall", description="Text after the name in the 220 greeting.")
    bare_line_ends: Literal["normalize", "reject"] = Field(
        "normalize",
        description="Lines in DATA ending in a bare LF or CR (SMTP smuggling): 'normalize' turns "
        "every line end into CRLF before relaying; 'reject' refuses the message with 550 5.5.2.",
    )
    smtputf8: bool = Field(True, description="Advertise SMTPUTF8 and pass it downstream.")


class Thresholds(Section):
    tag: float | None = Field(5.0, description="Total score from which mail is tagged.")
    quarantine: float | None = Field(
        8.0, description="Total score from which a copy is kept in spam/."
    )
    discard: float | None = Field(
        None, description="Total score from which mail is accepted and dropped (no bounce)."
    )
    reject: float | None = Field(12.0, description="Total score from which mail gets 550 at DATA.")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        chain = (self.tag, self.quarantine, self.discard, self.reject)
        values = [v for v in chain if v is not None]
        if any(b < a for a, b in itertools.pairwise(values)):
            raise ValueError("thresholds must not decrease: tag <= quarantine <= discard <= reject")
        return self


# Groups whose symbols add up quickly for one underlying fault (a forged HELO literal is
# also a mismatch): their total is capped unless the operator says otherwise.
DEFAULT_GROUP_CAPS: dict[str, float] = {
    "helo": 5.0,
}


class ScoringSettings(Section):
    thresholds: Thresholds = Field(default_factory=Thresholds)
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Symbol name -> weight, overriding the filters' declared defaults.",
    )
    group_caps: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GROUP_CAPS),
        description="Symbol group -> largest total it may contribute. Setting this "
        "replaces the defaults (helo: 5), so repeat the ones you keep.",
    )
    subject_prefix: str = Field("[SPAM]", description="Prefix for the subject of tagged mail.")
    quarantine_delivers: Literal["tagged", "no"] = Field(
        "tagged",
        description="Quarantined mail is also delivered tagged ('tagged') or only kept ('no').",
    )
    reject_reply: str = Field(
        "550 5.7.1 Message rejected as spam", description="Reply for score-based rejects."
    )

    @field_validator("reject_reply")
    @classmethod
    def _reply(cls, value: str) -> str:
        if not re.fullmatch(r"5\d\d [245]\.\d{1,3}\.\d{1,3} [\x20-\x7e]+", value):
            raise ValueError("must look like '550 5.7.1 text'")
        return value


class FilterSettings(Section):
    mode: Mode = Field(Mode.BLOCK, description="off, score (findings only add score) or block.")
    timeout: float = Field(
        10.0, gt=0, le=300,
        description="Seconds a check that waits on the network (DNS, clamd) may take before "
        "it counts as failed and on_error applies. Local checks are bounded by their own "
        "limits instead.",
    )
    on_error: OnError | None = Field(
        None, description="fail_open (zero-score *_ERROR symbol) or tempfail (451); "
        "empty for the filter's own default."
    )


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value.strip(), strict=False))


# A list entry "file:/abs/path" names a file of entries (ASSP's file: lists); see
# appliance/listfiles.py. Absolute only: the proxy, the UI and the CLI run elsewhere.
FILE_PREFIX = "file:"


def file_ref(value: str) -> str | None:
    """The path of a `file:` list entry, or None for an ordinary entry."""
    text = value.strip()
    if not text.startswith(FILE_PREFIX):
        return None
    return text[len(FILE_PREFIX):].strip()


def _file_ref_checked(value: str) -> str | None:
    path = file_ref(value)
    if path is not None and not path.startswith("/"):
        raise ValueError(f"{value!r}: a list file must be given by its absolute path "
                         f"(file:/etc/postwall/lists/NAME.txt)")
    if path is not None and ("\n" in path or "\x00" in path):
        raise ValueError(f"{value!r}: not a file path")
    return path


def _cidr_or_file(value: str) -> str:
    path = _file_ref_checked(value)
    return f"{FILE_PREFIX}{path}" if path is not None else _cidr(value)


class IPListSettings(FilterSettings):
    allow: list[str] = Field(
        default_factory=list,
        description="Client networks (CIDR) whose mail is accepted without scoring "
        "(ASSP whiteListedIPs). A virus is still refused. An entry file:/PATH adds the "
        "networks in that file (one per line), reloaded when it changes.",
    )
    deny: list[str] = Field(
        default_factory=list, description="Client networks (CIDR) refused at connect with 554."
    )

    @field_validator("allow", "deny")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr_or_file(v) for v in values]


class AddressListSettings(FilterSettings):
    whitelist: list[str] = Field(
        default_factory=list,
        description="Senders never scored: addresses, @domain, *.wildcards or /regex/ "
        "(ASSP whiteListedDomains). Entries added in the UI or by mail live in the database. "
        "Any list here may name files: file:/PATH (one entry per line, # comments), "
        "reloaded when the file changes.",
    )
    blacklist: list[str] = Field(default_factory=list, description="Senders refused with 550.")
    redlist: list[str] = Field(
        default_factory=list,
        description="Senders whose mail never feeds the autowhitelist or the corpora "
        "(out-of-office autoresponders).",
    )
    noprocessing: list[str] = Field(
        default_factory=list,
        description="Senders or recipients whose mail is not checked at all, except for viruses.",
    )
    spamlovers: list[str] = Field(
        default_factory=list,
        description="Recipients who want all their mail: blocks become tags when every "
        "recipient is a spamlover.",
    )
    use_autowhitelist: bool = Field(
        True, description="Senders our users wrote to are whitelisted (see autowhitelist)."
    )

    @field_validator("whitelist", "blacklist", "redlist", "noprocessing", "spamlovers")
    @classmethod
    def _files(cls, values: list[str]) -> list[str]:
        for value in values:
            _file_ref_checked(value)
        return values


class WeightedPattern(Section):
    pattern: str = Field(description="Python regular expression (case-insensitive), or "
                         "file:/PATH: one pattern per line, optionally PATTERN=>WEIGHT.")
    weight: float = Field(1.0, description="Multiplies the symbol's weight.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if _file_ref_checked(value) is not None:
            return value  # a file of patterns, one per line (weight multiplies each)
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class RegexSettings(FilterSettings):
    bomb_re: list[WeightedPattern] = Field(
        default_factory=list, description="Patterns searched in headers and body (ASSP bombRe)."
    )
    bomb_subject_re: list[WeightedPattern] = Field(
        default_factory=list, description="Patterns searched in the subject (bombSubjectRe)."
    )
    white_re: list[WeightedPattern] = Field(
        default_factory=list, description="Patterns that mark mail as wanted (whiteRe)."
    )
    red_re: list[WeightedPattern] = Field(
        default_factory=list,
        description="Patterns marking mail as redlisted, e.g. autoresponders (redRe).",
    )
    max_scan_bytes: int = Field(
        512000, ge=1024, description="Only this many octets of decoded body text are searched."
    )


LEVEL1 = r"exe\-bin|exe|scr|pif|vb[es]?|jse?|ws[cfh]?|sh[sb]?|li?nk|bat|cmd|com|ht[ab]|ps1?"
LEVEL2 = (
    r"ade|adp|bas|chm|cpl|crt|dll|hlp|hta|inf|ins|isp|jar|js|lnk|mdb|msc|msi|mst|pcd|reg|src|sct"
)
LEVEL3 = r"ace|arj|cab|iso|img|vhdx?|z|7z|rar|gz|tgz|bz2|xz|docm|xlsm|pptm|one|svg"


class AttachmentSettings(FilterSettings):
    level: Annotated[int, Field(ge=0, le=3)] = Field(
        2,
        description="0 off; 1 blocks BadAttachL1; 2 adds BadAttachL2; 3 adds BadAttachL3 "
        "(ASSP BlockExes).",
    )
    bad_attach_l1: str = Field(LEVEL1, description="Level 1 extensions (regex alternation).")
    bad_attach_l2: str = Field(LEVEL2, description="Level 2 extensions (regex alternation).")
    bad_attach_l3: str = Field(LEVEL3, description="Level 3 extensions (regex alternation).")
    scan_archives: bool = Field(True, description="Look at the names inside zip archives.")
    max_archive_depth: int = Field(3, ge=0, le=10, description="Nested archives followed.")
    max_archive_members: int = Field(1000, ge=1, description="Members listed per archive.")
    max_archive_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Uncompressed bytes read from nested archives."
    )
    max_archives: int = Field(
        100,
        ge=1,
        description="Archives opened per attachment, nested ones included; beyond it "
        "ARCHIVE_LIMIT (42.zip holds thousands of small zips).",
    )
    max_mime_depth: int = Field(
        50, ge=1, le=1000, description="Deeper MIME nesting is itself a finding (MIME_TOO_DEEP)."
    )
    max_mime_parts: int = Field(1000, ge=1, description="More parts are a finding.")

    @field_validator("bad_attach_l1", "bad_attach_l2", "bad_attach_l3")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:  # a ValueError, so that it names the key like any other
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class SizeSettings(FilterSettings):
    max_size: int | None = Field(
        None, ge=1, description="Score mail above this size (octets); empty uses no size score."
    )


class ClamAVSettings(FilterSettings):
    """Virus scanning with clamd. Off by default: a host has no clamd until the Ansible
    clamav role installs it, and the role turns this filter on (mode: block)."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default: no clamd until the clamav role installs one), score "
        "(a virus only adds CLAMAV_VIRUS's weight) or block (a virus is refused with 554 "
        "5.7.1, even for whitelisted senders).",
    )
    timeout: float = Field(
        30.0, gt=0, le=300,
        description="Seconds one scan may take (connect, upload, clamd's answer); past it "
        "on_error applies.",
    )
    on_error: OnError | None = Field(
        None,
        description="clamd unreachable, failing or too slow: tempfail (default; 451 4.7.1, "
        "the sender retries, nothing is delivered unscanned) or fail_open (deliver with a "
        "zero-score CLAMAV_ERROR symbol).",
    )
    address: str = Field(
        "/var/run/clamav/clamd.ctl",
        description="clamd's socket: an absolute path is its LocalSocket, HOST:PORT its "
        "TCPSocket ([v6]:PORT for IPv6).",
    )
    connect_timeout: float = Field(
        5.0, gt=0, le=60, description="Seconds to connect to clamd (within timeout)."
    )
    max_stream_bytes: int = Field(
        25 * 1024 * 1024, ge=1024,
        description="Largest message sent to clamd, in octets. Set it to clamd's "
        "StreamMaxLength (Debian's default is 25 MiB): clamd refuses longer streams, and a "
        "message above either limit is handled by `oversize`.",
    )
    oversize: Literal["skip", "tempfail", "reject"] = Field(
        "skip",
        description="A message too large to scan: 'skip' delivers it unscanned with the "
        "zero-weight CLAMAV_UNSCANNED symbol, 'tempfail' answers 452 4.3.4, 'reject' "
        "answers 552 5.3.4.",
    )
    keep_virus: bool = Field(
        False,
        description="Keep a copy of every refused virus in the mail store's virus/ folder "
        "(for checking false positives; subject to store.retention_days).",
    )
    scan_outgoing: bool = Field(
        True,
        description="Also scan mail from the relay listener (an infected internal machine "
        "must not send viruses out).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(parse_clamd_address(value))


class HeloSettings(FilterSettings):
    """HELO/EHLO validation on the inbound listener (filters/helo.py)."""

    reject: list[str] = Field(
        default_factory=list,
        description="HELO symbols that refuse the HELO/EHLO command in block mode (e.g. "
        "[HELO_INVALID, HELO_FORGED]): HELO_INVALID gets 501 5.5.2, the others 550 5.7.1, and "
        "the client may try again with a true name. Empty: every finding only adds score.",
    )
    check_dns: bool = Field(
        False,
        description="Look the HELO name up (A/AAAA through the shared resolver): a name "
        "that does not exist scores HELO_NO_DNS. Off by default: many legitimate senders "
        "announce internal names.",
    )
    check_dns_matches_client: bool = Field(
        False,
        description="With check_dns: a HELO name whose addresses do not include the client's "
        "scores HELO_NOT_CLIENT (large senders often fail this; weight it low).",
    )
    timeout: float = Field(
        5.0, gt=0, le=300,
        description="Seconds the DNS lookups of one HELO may take before HELO_ERROR applies.",
    )


DYNAMIC_PTR_PATTERNS: tuple[str, ...] = (
    r"(^|[.-])(dyn|dynamic|dynip|dhcp|pool|dsl|adsl|vdsl|xdsl|dial|dialup|dial-up|ppp|pppoe"
    r"|cable|broadband|cpe|residential|unassigned)[0-9]*([.-]|$)",
    r"(^|[.-])(static|client|customer|cust|user|host|ip)[0-9]*-[0-9]+-[0-9]+",
)


class FCrDNSSettings(FilterSettings):
    """Reverse DNS of the client, forward-confirmed (filters/fcrdns.py). Off by default:
    turn it on once `dns.nameservers` points at a resolver you trust."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default), score or block (the same: this check only adds score).",
    )
    timeout: float = Field(
        6.0, gt=0, le=60,
        description="The lookups start at connect (the greeting never waits for them); MAIL "
        "FROM waits for what is still missing at most this long, then FCRDNS_ERROR (score 0) "
        "and the session goes on.",
    )
    max_names: int = Field(
        5, ge=1, le=20,
        description="PTR names whose addresses are looked up to confirm the client (a PTR "
        "answer with more names is cut here, so a hostile zone cannot fan out lookups).",
    )
    dynamic_patterns: list[str] = Field(
        default_factory=lambda: list(DYNAMIC_PTR_PATTERNS),
        description="Regular expressions (case-insensitive, searched in the PTR name) that "
        "mark a generic, dynamically assigned host name (RDNS_DYNAMIC).",
    )
    dynamic_embedded_ip: bool = Field(
        True,
        description="A PTR name that spells out all four octets of the client's IPv4 address "
        "(1-2-3-4.isp.example, 4.3.2.1.isp.example, 001002003004.isp.example) is dynamic too.",
    )

    @field_validator("dynamic_patterns")
    @classmethod
    def _compiles(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return values


class SenderSettings(FilterSettings):
    """Sender domain validation at MAIL FROM on the inbound listener (filters/sender.py).
    Off by default: turn it on once `dns.nameservers` points at a resolver you trust."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default), score (findings only add score) or block (the reject_* "
        "findings below refuse MAIL FROM).",
    )
    timeout: float = Field(
        8.0, gt=0, le=60, description="Seconds the MX and A/AAAA lookups may take."
    )
    on_error: OnError | None = Field(
        None,
        description="DNS failure (timeout, SERVFAIL): fail_open (default; SENDER_TEMPERROR, "
        "score 0) or tempfail (451 4.1.8, the sender retries later).",
    )
    reject_unknown_domain: bool = Field(
        True,
        description="In block mode, a sender domain that does not exist (NXDOMAIN: 550 5.1.8) "
        "or cannot exist (no domain, not fully qualified, bad syntax: 553 5.1.7) is refused.",
    )
    reject_null_mx: bool = Field(
        True,
        description="In block mode, a sender domain publishing a null MX (RFC 7505: it "
        "accepts no mail, so no bounce could reach it) is refused with 550 5.7.27.",
    )
    reject_local_forged: bool = Field(
        True,
        description="In block mode, a sender in local_domains from a client outside "
        "relay_networks and ip_allow is refused with 550 5.7.1 (your own domain arriving "
        "from the internet). Turn off if outside services legitimately send as you.",
    )


def _domain_name(value: str) -> str:
    """A domain name, lower-cased, without the root dot."""
    name = value.strip().lower().rstrip(".")
    if not DOMAIN_RE.match(name):
        raise ValueError(f"invalid domain name {value!r}")
    return name


def _domain_names(values: list[str]) -> list[str]:
    return [_domain_name(value) for value in values]


def _domain_patterns(values: list[str]) -> list[str]:
    """Domains as `example.com` or `*.example.com` (subdomains), lower-cased."""
    out = []
    for value in values:
        name = value.strip().lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if not DOMAIN_RE.match(bare):
            raise ValueError(f"invalid domain name {value!r}")
        out.append(name)
    return out


class GreylistSettings(FilterSettings):
    """Greylisting at RCPT (ASSP and postgrey style) by (client network, sender,
    recipient) triplet. Off by default: it delays the first mail from every new sender."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default: operators opt in), score (GREYLISTED only adds its weight: "
        "shows what would be delayed) or block (a new triplet gets 451 4.7.1).",
    )
    timeout: float = Field(
        5.0, gt=0, le=300,
        description="Seconds to look a triplet up in the database when this worker has not "
        "seen it yet; past it on_error applies.",
    )
    delay: float = Field(
        300.0, ge=0, le=86400,
        description="Seconds a new triplet is delayed: a retry after this passes (ASSP and "
        "postgrey: 5 minutes).",
    )
    retry_window: float = Field(
        172800.0, gt=0, le=30 * 86400,
        description="Seconds after the first attempt within which the retry must come (2 "
        "days); a later retry is treated as a new first attempt.",
    )
    pass_days: int = Field(
        36, ge=1, le=3650,
        description="Days a passed triplet (and an auto-whitelisted client network) is kept "
        "after its last use; every use renews it (postgrey --max-age 35).",
    )
    ipv4_prefix: int = Field(
        24, ge=8, le=32,
        description="IPv4 clients are grouped by this network prefix: big senders retry "
        "from another address of the same pool.",
    )
    ipv6_prefix: int = Field(64, ge=16, le=128, description="Likewise for IPv6 clients.")
    auto_whitelist_after: int = Field(
        5, ge=0, le=10000,
        description="A client network that retried this many different triplets after the "
        "delay is a real mail server and is no longer greylisted (postgrey "
        "--auto-whitelist-clients); 0 never.",
    )
    pass_networks: list[str] = Field(
        default_factory=list,
        description="Client networks (CIDR) never greylisted, e.g. big providers' outbound "
        "pools that retry from other addresses.",
    )
    pass_sender_domains: list[str] = Field(
        default_factory=list,
        description="Sender domains never greylisted ('example.com', '*.example.com' for "
        "subdomains). Sender domains can be forged: list only those whose delay hurts.",
    )
    null_sender: Literal["greylist", "pass"] = Field(
        "greylist",
        description="The null sender <> (bounces, receipts, address verification probes): "
        "'greylist' delays it like any sender (triplet sender '<>'); 'pass' lets it through "
        "at once, for sites whose users send to servers that verify senders by callout.",
    )

    @field_validator("pass_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr(v) for v in values]

    @field_validator("pass_sender_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        return _domain_patterns(values)

    @model_validator(mode="after")
    def _window_after_delay(self) -> GreylistSettings:
        if self.retry_window <= self.delay:
            raise ValueError("retry_window must be longer than delay")
        return self


class PenaltyPoints(Section):
    """Points a client collects per bad event; 0 ignores that kind of event."""

    rejected_recipient: float = Field(
        1.0, ge=0, le=1000,
        description="Per recipient refused with 5xx, by Postwall or by Postfix (address "
        "harvesting, dictionary attacks).",
    )
    dnsbl: float = Field(
        5.0, ge=0, le=1000, description="Per DNS blocklist listing (symbols in group 'dnsbl')."
    )
    virus: float = Field(25.0, ge=0, le=1000, description="Per message with a virus.")
    blocked_message: float = Field(
        4.0, ge=0, le=1000,
        description="Per message refused or discarded as spam or by a blocking check.",
    )
    protocol_error: float = Field(
        1.0, ge=0, le=1000,
        description="Per unknown command, syntax error or command out of sequence.",
    )
    too_many_errors: float = Field(
        10.0, ge=0, le=1000,
        description="When the session is closed for exceeding limits.max_errors.",
    )
    smuggling: float = Field(
        25.0, ge=0, le=1000,
        description="Per message whose DATA holds an SMTP smuggling end-of-data sequence "
        "(a dot line with a bare CR or LF).",
    )
    early_talker: float = Field(
        15.0, ge=0, le=1000,
        description="For talking before the greeting (filters.early_talker).",
    )
    directory_harvest: float = Field(
        20.0, ge=0, le=1000,
        description="When a connection is closed for too many unknown recipients "
        "(filters.recipient_verify.harvest), besides rejected_recipient for each of them.",
    )


class PenaltyBoxSettings(FilterSettings):
    """IP reputation with decay (ASSP's penalty box): bad events add points to the
    client's score (IPv4 address or IPv6 /64), which halves every `half_life`."""

    half_life: float = Field(
        3600.0, gt=0, le=30 * 86400,
        description="Seconds in which a client's score halves.",
    )
    tempfail_score: float = Field(
        20.0, gt=0,
        description="From this score new connections get 421 4.7.0 (the sender retries "
        "later, when the score has decayed).",
    )
    reject_score: float | None = Field(
        50.0, gt=0,
        description="From this score new connections get 554 5.7.1; empty never refuses "
        "permanently.",
    )
    points: PenaltyPoints = Field(default_factory=PenaltyPoints)
    forget_below: float = Field(
        0.5, gt=0,
        description="Clients whose score decayed below this are deleted by the maintenance.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PenaltyBoxSettings:
        if self.reject_score is not None and self.reject_score < self.tempfail_score:
            raise ValueError("reject_score must not be below tempfail_score")
        if self.forget_below >= self.tempfail_score:
            raise ValueError("forget_below must be below tempfail_score")
        return self


class RateLimitSettings(FilterSettings):
    """Connections per client per minute and messages per client per hour, counted
    across all workers (IPv6 clients per /64). Clients in relay_networks, ip_allow and
    `exempt_networks` are not limited."""

    connections_per_minute: int = Field(
        120, ge=0, le=1_000_000,
        description="Connections one client may open in any 60 s; more get 421 4.7.0. "
        "Refused attempts count too, so a client must slow down to get in. 0: no limit.",
    )
    messages_per_hour: int = Field(
        2000, ge=0, le=10_000_000,
        description="Transactions (MAIL FROM) one client may start in any hour; more get "
        "451 4.7.1 at MAIL. 0: no limit.",
    )
    exempt_networks: list[str] = Field(
        default_factory=list, description="Client networks (CIDR) that are never limited."
    )

    @field_validator("exempt_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr(v) for v in values]


class EarlyTalkerSettings(FilterSettings):
    """postscreen's pregreet test: wait `greeting_delay` before the 220 greeting; a
    client that talks first is a bot that does not follow the protocol."""

    greeting_delay: float = Field(
        0.0, ge=0, le=60,
        description="Seconds to wait before the 220 greeting (postscreen's greet_wait is "
        "6 s; a few seconds catch most bots). 0 turns the test off. Not applied on the "
        "relay listener, nor to relay_networks and ip_allow clients.",
    )


class SPFSettings(FilterSettings):
    """SPF (RFC 7208) of the MAIL FROM identity, or of the HELO name for the null sender,
    on the inbound listener (filters/spf.py). Off by default: turn it on once
    `dns.nameservers` points at a resolver you trust."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default), score (the SPF_* symbol only adds its weight) or block "
        "(with reject_fail, an SPF fail is refused at MAIL FROM).",
    )
    timeout: float = Field(
        8.0, gt=0, le=60,
        description="Seconds one SPF evaluation may take, every DNS lookup of its include "
        "chain together; past it the result is temperror (SPF_TEMPERROR).",
    )
    reject_fail: bool = Field(
        False,
        description="In block mode, refuse MAIL FROM when SPF says fail (the domain's owner "
        "says this client may not send for it) with 550 5.7.23 and the domain's explanation. "
        "Off: fail only scores SPF_FAIL, and DMARC decides with the DKIM result too "
        "(forwarded mail fails SPF but may carry a valid DKIM signature).",
    )


class DKIMSettings(FilterSettings):
    """DKIM signature verification (RFC 6376) of inbound mail (filters/dkim.py). Off by
    default: turn it on once `dns.nameservers` points at a resolver you trust."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default), score or block (the same: DKIM only records results and "
        "adds score; DMARC acts on them).",
    )
    timeout: float = Field(
        10.0, gt=0, le=60,
        description="Seconds for the key lookups and the verification of all signatures; "
        "past it DKIM_ERROR (score 0).",
    )
    max_signatures: int = Field(
        5, ge=1, le=50,
        description="DKIM-Signature fields verified per message (from the top); further "
        "ones are ignored, so a message with hundreds of signatures costs no more.",
    )
    min_key_bits: int = Field(
        1024, ge=512, le=4096,
        description="RSA keys shorter than this are refused (permerror, DKIM_INVALID): RFC "
        "8301 forbids verifying with keys under 1024 bits.",
    )
    max_key_bits: int = Field(
        8192, ge=1024, le=16384,
        description="RSA keys longer than this are refused (permerror, DKIM_INVALID) without "
        "being used: verifying with huge keys costs CPU for nothing (RFC 8301 needs up to "
        "4096).",
    )

    @model_validator(mode="after")
    def _key_range(self) -> DKIMSettings:
        if self.min_key_bits > self.max_key_bits:
            raise ValueError("min_key_bits must not exceed max_key_bits")
        return self


class DMARCSettings(FilterSettings):
    """DMARC (RFC 7489) of the RFC5322.From domain, from the SPF and DKIM results
    (filters/dmarc.py, runs after DKIM). Off by default: turn it on once `dns.nameservers`
    points at a resolver you trust, with the spf and dkim filters."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (default), score (a failure only adds its DMARC_FAIL_* weight) or "
        "block (with honor_reject, a failure under p=reject is refused).",
    )
    timeout: float = Field(
        6.0, gt=0, le=60,
        description="Seconds for the _dmarc policy lookups; past it DMARC_ERROR (score 0).",
    )
    honor_reject: bool = Field(
        True,
        description="In block mode, refuse mail that fails DMARC where the domain publishes "
        "p=reject (after pct sampling) with 550 5.7.1. Off: it scores DMARC_FAIL_REJECT.",
    )


SPAMHAUS_REFUSAL_CODES = ("127.255.255.252", "127.255.255.254", "127.255.255.255")
SYMBOL_LABEL_RE = re.compile(r"^[A-Z0-9]+(?:_[A-Z0-9]+)*$")


def _symbol_label(value: str) -> str:
    label = value.strip().upper()
    if not SYMBOL_LABEL_RE.match(label) or len(label) > 40:
        raise ValueError(f"label {value!r}: use 1-40 letters, digits and single underscores")
    return label


def _list_answer(value: str) -> str:
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if address not in ipaddress.IPv4Network("127.0.0.0/8"):
        raise ValueError(f"{value}: DNS list answers lie in 127.0.0.0/8")
    return str(address)


class DNSListCode(Section):
    label: str = Field(
        description="Symbol suffix for this answer: the symbol is <PREFIX>_<zone label>_<label>, "
        "e.g. DNSBL_ZEN_SBL."
    )
    weight: float = Field(description="Score of this answer.")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return _symbol_label(value)


class DNSListZone(Section):
    """One DNS list (RFC 5782): `<key>.<zone>` has an A record in 127.0.0.0/8 when listed."""

    zone: str = Field(description="The list's DNS zone, e.g. zen.spamhaus.org.")
    label: str | None = Field(
        None,
        description="Symbol label, e.g. ZEN gives DNSBL_ZEN; empty: the zone name in upper "
        "case with underscores.",
    )
    weight: float | None = Field(
        3.0,
        description="Score of any 127.0.0.0/8 answer that `codes` does not name (symbol "
        "<PREFIX>_<label>); empty: such answers are ignored.",
    )
    codes: dict[str, DNSListCode] = Field(
        default_factory=dict,
        description="Answer address -> {label, weight}: what each return code means, e.g. "
        "127.0.0.2: {label: SBL, weight: 4}, 127.0.0.10: {label: PBL, weight: 1.5}.",
    )
    bitmask: bool = Field(
        False,
        description="Codes are bits (multi.uribl.com, SURBL): an answer matches every code "
        "whose bits it has set (127.0.0.14 = 2 + 4 + 8).",
    )
    refusal_codes: list[str] = Field(
        default_factory=lambda: list(SPAMHAUS_REFUSAL_CODES),
        description="Answers meaning 'your resolver is refused or rate-limited' (Spamhaus "
        "127.255.255.252/254/255): they suspend the zone instead of scoring.",
    )
    probe: bool = Field(
        True,
        description="Check the zone now and then with its RFC 5782 test entries (listed one "
        "listed, unlisted one not); a zone that fails is suspended.",
    )

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        name = value.strip().lower().rstrip(".")
        if not DOMAIN_RE.match(name) or "." not in name:
            raise ValueError(f"invalid zone name {value!r}")
        return name

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return _symbol_label(value) if value else None

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: dict[str, DNSListCode]) -> dict[str, DNSListCode]:
        codes = {_list_answer(k): v for k, v in value.items()}
        labels = [code.label for code in codes.values()]
        duplicate = sorted({label for label in labels if labels.count(label) > 1})
        if duplicate:
            raise ValueError(f"codes share the label(s) {', '.join(duplicate)}")
        return codes

    @field_validator("refusal_codes")
    @classmethod
    def _refusals(cls, value: list[str]) -> list[str]:
        return [_list_answer(v) for v in value]

    @model_validator(mode="after")
    def _scores_something(self) -> DNSListZone:
        if self.weight is None and not self.codes:
            raise ValueError(f"zone {self.zone}: give a weight or codes, or it never scores")
        if self.bitmask and any(
            int(ipaddress.IPv4Address(c)) & 0xFFFFFF == 0 for c in self.codes
        ):
            raise ValueError("bitmask codes need at least one bit below 127.")
        return self

    def weights(self) -> list[float]:
        return [w for w in (self.weight, *(c.weight for c in self.codes.values())) if w is not None]

    @property
    def symbol_label(self) -> str:
        """`label`, else the zone name in upper case with `_` for dots and dashes."""
        if self.label:
            return self.label
        return "".join(c if c.isalnum() else "_" for c in self.zone.upper()).strip("_")


class DNSBLZone(DNSListZone):
    @model_validator(mode="after")
    def _positive(self) -> DNSBLZone:
        if any(w < 0 for w in self.weights()):
            raise ValueError(f"zone {self.zone}: blocklist weights must not be negative "
                             "(an allow list belongs in dnswl_zones)")
        return self


class DNSWLZone(DNSListZone):
    weight: float | None = Field(
        -2.0,
        description="Score (zero or negative) of any 127.0.0.0/8 answer that `codes` does "
        "not name; empty: such answers are ignored.",
    )

    @model_validator(mode="after")
    def _negative(self) -> DNSWLZone:
        if any(w > 0 for w in self.weights()):
            raise ValueError(f"zone {self.zone}: allow list weights must be zero or negative")
        return self


class URIBLZone(DNSBLZone):
    refusal_codes: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", *SPAMHAUS_REFUSAL_CODES],
        description="Answers meaning 'your resolver is refused or rate-limited' (URIBL "
        "127.0.0.1, Spamhaus DBL 127.255.255.252/254/255): they suspend the zone.",
    )
    probe_listed: str = Field(
        "test", description="Name the zone must list (RFC 5782: 'test'); empty: not probed."
    )
    probe_unlisted: str = Field(
        "invalid",
        description="Name the zone must not list (RFC 5782: 'invalid'); empty: not probed.",
    )
    ips: bool = Field(
        False,
        description="Also look up IP-literal URLs (http://192.0.2.1/) here, reversed like a "
        "DNSBL (4.3.2.1.zone); for lists that carry IPs, such as Spamhaus SBL.",
    )

    @field_validator("probe_listed", "probe_unlisted")
    @classmethod
    def _probe_name(cls, value: str) -> str:
        name = value.strip().lower().rstrip(".")
        if name and not DOMAIN_RE.match(name):
            raise ValueError(f"invalid probe name {value!r}")
        return name


class DNSListSettings(FilterSettings):
    """What DNSBL and URIBL share: timeout, blocking, the sanity guard."""

    timeout: float = Field(
        5.0, gt=0, le=60,
        description="Seconds the lookups may take in all; past it on_error applies "
        "(fail_open by default: the mail is judged without this check).",
    )
    reject_score: float | None = Field(
        3.0,
        description="In block mode, refuse the mail when this check's score (its group "
        "capped by scoring.group_caps) reaches this; empty: it only adds score.",
    )
    probe_interval: float = Field(
        600.0, ge=1, le=86400,
        description="Seconds between sanity probes of one zone (per worker).",
    )
    suspend_seconds: float = Field(
        600.0, ge=1, le=86400,
        description="How long a zone that refused us, listed everything or did not list its "
        "test entry stays suspended before it is probed again.",
    )


def _unique_labels(zones: list[DNSListZone], where: str) -> None:
    labels = [zone.symbol_label for zone in zones]
    duplicate = sorted({label for label in labels if labels.count(label) > 1})
    if duplicate:
        raise ValueError(f"{where}: zones share the label(s) {', '.join(duplicate)}; give "
                         "each zone its own label")


class DNSBLSettings(DNSListSettings):
    """The client IP in DNS blocklists (DNSBL) and allow lists (DNSWL), asked at connect
    and judged at MAIL FROM."""

    zones: list[DNSBLZone] = Field(
        default_factory=list,
        description="Blocklists of client addresses (symbols DNSBL_<label>, group dnsbl).",
    )
    dnswl_zones: list[DNSWLZone] = Field(
        default_factory=list,
        description="Allow lists of client addresses (symbols DNSWL_<label>, group dnswl, "
        "zero or negative weights), e.g. list.dnswl.org.",
    )
    check_private: bool = Field(
        False,
        description="Also look up clients with private, loopback or other non-global "
        "addresses (no public list knows them; tests on loopback need it).",
    )

    @model_validator(mode="after")
    def _labels(self) -> DNSBLSettings:
        _unique_labels(list(self.zones), "filters.dnsbl.zones")
        _unique_labels(list(self.dnswl_zones), "filters.dnsbl.dnswl_zones")
        return self


class URIBLSettings(DNSListSettings):
    """Domains of the URLs in a message's text in URI blocklists, judged at DATA."""

    zones: list[URIBLZone] = Field(
        default_factory=list,
        description="URI blocklists (symbols URIBL_<label>, group uribl), e.g. "
        "multi.uribl.com with bitmask codes, dbl.spamhaus.org.",
    )
    max_lookups: int = Field(
        20, ge=1, le=1000,
        description="Distinct domains (and IPs) looked up per message, in the order they "
        "appear; each is asked in every zone. Bounds the DNS traffic one message causes.",
    )
    max_scan_bytes: int = Field(
        512000, ge=1024, le=50 * 1024 * 1024,
        description="Decoded text (plain and HTML parts) searched for URLs per message.",
    )
    skip_domains: list[str] = Field(
        default_factory=lambda: ["w3.org"],
        description="Registered domains never looked up (besides local_domains): domains "
        "in most mail that no list carries.",
    )
    private_suffixes: bool = Field(
        False,
        description="Also treat the public suffix list's private section as suffixes "
        "(foo.blogspot.com is then its own registered domain); URI lists use the ICANN "
        "section (blogspot.com).",
    )

    @field_validator("skip_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        return _domain_names(values)

    @model_validator(mode="after")
    def _labels(self) -> URIBLSettings:
        _unique_labels(list(self.zones), "filters.uribl.zones")
        return self


class BayesSettings(FilterSettings):
    min_spam: int = Field(
        50, ge=1, description="Weighted spam messages learned before BAYES_* symbols other "
        "than BAYES_UNSURE are given (too little training guesses)."
    )
    min_ham: int = Field(50, ge=1, description="Weighted ham messages learned, likewise.")
    min_clues: int = Field(
        5, ge=1, description="Known tokens a message needs; fewer gives BAYES_UNSURE."
    )
    max_clues: int = Field(
        150, ge=5, le=1000, description="Strongest tokens combined (Robinson/Fisher)."
    )
    max_pair_clues: int = Field(
        5, ge=0, le=1000, description="Of those, at most this many body word pairs (a "
        "pair repeats its words' evidence; 0 judges by single tokens only)."
    )
    strength: float = Field(
        0.16, gt=0, le=10, description="Robinson's s: how strongly a rarely seen token is "
        "pulled towards 0.5."
    )
    min_strength: float = Field(
        0.346, ge=0, lt=0.5, description="Tokens nearer than this to 0.5 are no clues."
    )
    pair_distance: int = Field(
        1, ge=0, le=3, description="Body word pairs up to this far apart are tokens too "
        "(the Markov/OSB part); 0 uses single words only."
    )
    max_text_chars: int = Field(
        60000, ge=1000, description="Decoded body text tokenized per message."
    )


class LearningSettings(Section):
    learn_outgoing: bool = Field(
        True, description="Mail sent through the relay listener is learned as ham "
        "(unless redlisted)."
    )
    outgoing_max_bytes: int = Field(
        262144, ge=1024, description="Larger outgoing messages are not learned (they cost "
        "time and teach little)."
    )
    queue_size: int = Field(
        200, ge=1, description="Outgoing messages waiting to be learned per worker; more are "
        "dropped and counted."
    )
    false_negative_weight: int = Field(
        2, ge=1, le=100, description="Weight of spam@ reports and errors/spam (spam that got "
        "through)."
    )
    false_positive_weight: int = Field(
        4, ge=1, le=100, description="Weight of notspam@ reports, errors/notspam and released "
        "quarantine (ham that was blocked)."
    )
    max_message_bytes: int = Field(
        10485760, ge=1024, description="Largest message learned from any source."
    )
    corpus_max_age_days: int = Field(
        365, ge=1, description="Learned messages older than this leave the corpus at the "
        "next rebuild."
    )
    corpus_max_messages: int = Field(
        20000, ge=10, description="Newest learned messages kept per label; older ones leave "
        "the corpus at the next rebuild."
    )
    rebuild_hours: float = Field(
        24.0, ge=1, description="How often the token counts are rebuilt from the corpus."
    )
    folder_scan_seconds: float = Field(
        300.0, ge=10, description="How often errors/spam and errors/notspam are scanned for "
        "new messages to learn."
    )


class CommandSettings(Section):
    enabled: bool = Field(True, description="Accept mail commands at the report domain.")
    domain: str = Field(
        "postwall.local", description="Domain of the command addresses (spam@, help@, ...). "
        "Accepted only on the relay listener, from senders in local_domains."
    )
    privileged: list[str] = Field(
        default_factory=list, description="Users who may change the global lists and ask "
        "for others' block reports (addresses, @domain or wildcards)."
    )
    helpdesk: str | None = Field(
        None, description="Address that gets a copy of every command's answer."
    )
    max_message_size: int = Field(
        10485760, ge=1024, description="Largest command mail; bigger ones get 552."
    )
    max_addresses: int = Field(100, ge=1, description="Address lines read per command.")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _domain_name(value)


class BlockReportSettings(Section):
    enabled: bool = Field(False, description="Send each user a daily digest of their "
                          "quarantined mail.")
    hour: int = Field(7, ge=0, le=23, description="Hour of the day (UTC) the digests go out.")
    base_url: str | None = Field(
        None, description="Address of the web UI that answers the digest links, e.g. "
        "https://postwall.example.com:8443; without it digests carry no links."
    )
    link_days: int = Field(7, ge=1, le=60, description="How long a digest link works.")
    max_entries: int = Field(200, ge=1, description="Messages listed per digest.")
    sender: str | None = Field(
        None, description="From address of digests and command answers (default: "
        "postwall@<commands.domain>)."
    )


# -- recipient verification (filters.recipient_verify) ---------------------------------

LDAP_FILTER_FIELDS = frozenset({"address", "local", "domain"})


def check_ldap_filter_template(template: str) -> str:
    """A filter template names only {address}, {local} and {domain} (each escaped when
    filled in), and is one parenthesised LDAP filter with balanced parentheses."""
    import string

    text = template.strip()
    fields = set()
    try:
        for _, name, spec, conversion in string.Formatter().parse(text):
            if name is None:
                continue
            if name not in LDAP_FILTER_FIELDS or spec or conversion:
                raise ValueError(
                    f"unknown placeholder {{{name}}}: use {{address}}, {{local}} or {{domain}}"
                )
            fields.add(name)
    except ValueError as exc:
        raise ValueError(f"LDAP filter template {template!r}: {exc}") from None
    if not fields:
        raise ValueError(f"LDAP filter template {template!r} names no {{address}}")
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if not text.startswith("(") or not text.endswith(")") or depth != 0:
        raise ValueError(f"LDAP filter template {template!r}: unbalanced parentheses")
    return text


class CalloutSettings(Section):
    """SMTP callout to the internal mail server: a probe session that asks about the
    recipient and sends nothing."""

    host: str = Field(
        description="The internal mail server to ask (IP or host name), directly: not the "
        "local Postfix, which would accept any recipient of a relayed domain."
    )
    port: int = Field(25, ge=1, le=65535, description="Its SMTP port.")
    command: Literal["rcpt", "vrfy"] = Field(
        "rcpt",
        description="rcpt: MAIL FROM:<> then RCPT TO:<address>, then RSET (works with every "
        "server). vrfy: VRFY address (servers often disable it; 252 counts as existing).",
    )
    timeout: float = Field(
        5.0, gt=0, le=60,
        description="Seconds to connect and for each reply; past it the server counts as "
        "unavailable and on_unavailable applies.",
    )
    helo: str | None = Field(
        None, description="Name sent in EHLO; empty for smtp.hostname."
    )
    max_idle_connections: int = Field(
        2, ge=0, le=50,
        description="Probe sessions kept open per worker for the next lookups (RSET between "
        "them); 0 opens one per lookup.",
    )
    idle_seconds: float = Field(
        20.0, gt=0, le=300,
        description="An idle probe session older than this is closed (servers drop idle "
        "clients after a while).",
    )


class LDAPLookupSettings(Section):
    """Directory lookup with ldap3 (Active Directory, OpenLDAP): the recipient exists when
    the filter finds an entry under base_dn."""

    servers: list[str] = Field(
        min_length=1,
        description="ldap://host[:port] or ldaps://host[:port] URLs, tried in this order.",
    )
    bind_dn: str | None = Field(
        None,
        description="DN (or user@domain for AD) to bind as; empty binds anonymously. Use a "
        "service account that may only read mail attributes.",
    )
    bind_password_file: Path | None = Field(
        None,
        description="File holding the bind password (first line). It must be owner-only "
        "(mode 0600 or 0400): Postwall refuses to start with a file others can read.",
    )
    base_dn: str = Field(description="Where to search, e.g. dc=example,dc=com.")
    filter: str = Field(
        "(|(mail={address})(proxyAddresses=smtp:{address}))",
        description="Search filter; {address}, {local} and {domain} are replaced by the "
        "recipient's parts, escaped (RFC 4515), so '*' or ')' in an address match "
        "literally. OpenLDAP: (mail={address}); AD: the default (aliases in proxyAddresses).",
    )
    ca_file: Path | None = Field(
        None, description="CA certificates (PEM) to check ldaps:// servers against; empty "
        "for the system's."
    )
    timeout: float = Field(
        5.0, gt=0, le=60,
        description="Seconds to connect and for each answer; past it on_unavailable applies.",
    )
    pool_size: int = Field(
        4, ge=1, le=64,
        description="Bound LDAP connections kept per worker (each used by one lookup at a "
        "time, in a thread: the event loop never waits on LDAP).",
    )

    @field_validator("servers")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        for value in values:
            scheme, sep, rest = value.partition("://")
            if not sep or scheme.lower() not in ("ldap", "ldaps") or not rest.strip("/"):
                raise ValueError(f"expected ldap://host[:port] or ldaps://host[:port], "
                                 f"got {value!r}")
        return values

    @field_validator("filter")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_ldap_filter_template(value)

    @model_validator(mode="after")
    def _bind_pair(self) -> LDAPLookupSettings:
        if (self.bind_dn is None) != (self.bind_password_file is None):
            raise ValueError("bind_dn and bind_password_file must be set together")
        return self


class RecipientDomainSettings(Section):
    """How the recipients of one local domain are verified."""

    method: Literal["none", "static", "callout", "ldap"] = Field(
        "none",
        description="none (not verified: the internal server decides), static (the "
        "valid_recipients list and list_file), callout (ask the internal mail server by "
        "SMTP) or ldap (look the address up in the directory).",
    )
    on_unavailable: Literal["tempfail", "accept"] = Field(
        "tempfail",
        description="When the callout target or LDAP cannot answer (down, timeout, 4xx, "
        "bad credentials): tempfail answers 451 4.4.3 so the sender retries; accept lets "
        "the recipient through unverified.",
    )
    list_file: Path | None = Field(
        None,
        description="static: a file of valid recipients, one a line (user@domain, "
        "@domain or *@domain for a catch-all, wildcards, /regex/; # comments), read again "
        "when it changes. Adds to the valid_recipients list.",
    )
    callout: CalloutSettings | None = Field(None, description="Settings for method callout.")
    ldap: LDAPLookupSettings | None = Field(None, description="Settings for method ldap.")

    @model_validator(mode="after")
    def _method_settings(self) -> RecipientDomainSettings:
        if self.method == "callout" and self.callout is None:
            raise ValueError("method callout needs a callout section (host, port...)")
        if self.method == "ldap" and self.ldap is None:
            raise ValueError("method ldap needs an ldap section (servers, base_dn...)")
        return self


class RecipientCacheSettings(Section):
    positive_ttl: float = Field(
        3600.0, ge=0, le=30 * 86400,
        description="Seconds a recipient found to exist (callout, ldap) is not asked again.",
    )
    negative_ttl: float = Field(
        600.0, ge=0, le=30 * 86400,
        description="Seconds an unknown recipient stays unknown without asking; shorter, so "
        "a new mailbox receives mail soon. Failures (unavailable) are never cached.",
    )
    max_entries: int = Field(
        100000, ge=0, le=10_000_000,
        description="Answers kept per worker (least recently used go first); 0 disables "
        "the cache.",
    )


class HarvestSettings(Section):
    """Directory-harvest protection: a client guessing addresses is cut off."""

    max_unknown_per_connection: int = Field(
        10, ge=0, le=10000,
        description="Unknown recipients in one connection after which it is closed with "
        "421 4.7.0 (and the client gets penalty_box.points.directory_harvest); 0 never.",
    )
    max_unknown_per_client: int = Field(
        30, ge=0, le=100000,
        description="Unknown recipients from one client (IPv4 address or IPv6 /64) within "
        "window seconds, across its connections, after which its connections are closed "
        "likewise; 0 never. Counted per worker process.",
    )
    window: float = Field(
        3600.0, gt=0, le=7 * 86400, description="Seconds of the per-client count."
    )


class RecipientVerifySettings(FilterSettings):
    """Recipient verification at RCPT for local domains (unknown users get 550 5.1.1),
    chosen per domain, with directory-harvest protection. Not a spam rule: whitelists and
    test mode do not turn it off (mode score only records)."""

    timeout: float = Field(
        30.0, gt=0, le=300,
        description="Upper bound in seconds for one recipient's check; the callout and LDAP "
        "timeouts below should be well inside it. Past it on_error applies.",
    )
    default: RecipientDomainSettings = Field(
        default_factory=RecipientDomainSettings,
        description="How recipients in local domains not listed under domains are verified.",
    )
    domains: dict[str, RecipientDomainSettings] = Field(
        default_factory=dict,
        description="Per local domain ('example.com', '*.example.com' for subdomains): "
        "its own method and settings, instead of default.",
    )
    valid_recipients: list[str] = Field(
        default_factory=list,
        description="For method static: valid addresses (user@domain), catch-all domains "
        "(@domain or *@domain), wildcards (*@dept.example.com) and /regex/; the database "
        "list valid_recipients (web UI, `postwall lists`) adds to it. Like the other "
        "lists it may name files: file:/PATH (one entry per line), reloaded when the file "
        "changes; they apply to every static domain.",
    )
    always_accept: list[str] = Field(
        default_factory=lambda: ["postmaster", "abuse"],
        description="Local parts accepted in every local domain without a lookup. "
        "postmaster is always accepted (RFC 5321 4.5.1), listed or not.",
    )
    cache: RecipientCacheSettings = Field(default_factory=RecipientCacheSettings)
    harvest: HarvestSettings = Field(default_factory=HarvestSettings)

    @field_validator("valid_recipients")
    @classmethod
    def _files(cls, values: list[str]) -> list[str]:
        for value in values:
            _file_ref_checked(value)
        return values

    @field_validator("domains")
    @classmethod
    def _domain_keys(
        cls, values: dict[str, RecipientDomainSettings]
    ) -> dict[str, RecipientDomainSettings]:
        names = _domain_patterns(list(values))
        return dict(zip(names, values.values(), strict=True))

    @field_validator("always_accept")
    @classmethod
    def _local_parts(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            local = value.strip().lower()
            if not local or "@" in local or any(c.isspace() for c in local):
                raise ValueError(f"always_accept takes local parts (no @ or spaces): {value!r}")
            out.append(local)
        return out

class BATVSettings(FilterSettings):
    """Backscatter protection (appliance/batv.py, filters/backscatter.py): outgoing envelope
    senders of local domains are tagged prvs=KDDDSSSSSS=user@domain; an inbound bounce to
    a local address is accepted only with a valid tag. Off by default: turn it on only
    when every outgoing message leaves through the relay listener (a bounce to mail sent
    around the appliance carries no tag)."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (no tagging, no checks), score (a bounce without a valid tag adds "
        "BATV_* score) or block (it is refused with 550 5.7.1).",
    )
    key_file: Path | None = Field(
        None, description="Keys ('K SECRET' per line, the first signs, all verify); "
        "generated on first use, owner-only. Default: <data_dir>/batv.keys."
    )
    valid_days: int = Field(
        7, ge=1, le=60, description="Days a tagged return path accepts bounces."
    )
    hash: Literal["sha1", "sha256"] = Field(
        "sha1", description="HMAC of the tag (sha1 is the draft's; changing it voids "
        "outstanding tags)."
    )
    exempt: list[str] = Field(
        default_factory=lambda: ["postmaster@*", "abuse@*"],
        description="Addresses never tagged and whose bounces need no tag (mailing-list "
        "addresses whose software compares the return path): addresses, @domain, "
        "wildcards or /regex/.",
    )
    allow_mdn: bool = Field(
        True, description="Read receipts (multipart/report; report-type="
        "disposition-notification) go to the From address, never tagged: accept them."
    )


class SRSSettings(FilterSettings):
    """Sender Rewriting Scheme (appliance/srs.py, filters/srs.py). Mail on the relay
    listener whose envelope sender is not in local_domains is mail the internal server
    forwards: its sender becomes SRS0=HASH=TT=domain=user@<domain> so SPF passes at the
    next hop; bounces to those addresses are validated and sent back to the original
    sender. Off by default."""

    mode: Mode = Field(
        Mode.OFF,
        description="off (no rewriting), score (an invalid SRS recipient only adds "
        "SRS_INVALID) or block (it is refused with 550 5.1.1).",
    )
    domain: str | None = Field(
        None, description="Domain of the rewritten senders; must be one of local_domains "
        "(its MX points at the appliance). Required unless mode is off."
    )
    key_file: Path | None = Field(
        None, description="Secrets (one per line, the first signs, all verify); generated "
        "on first use, owner-only. Default: <data_dir>/srs.keys."
    )
    max_age_days: int = Field(
        21, ge=1, le=365, description="Days a rewritten sender accepts bounces."
    )
    hash_length: int = Field(
        4, ge=4, le=27, description="Base64 characters of the hash (the paper's 4 is "
        "1 in 16.7 million to guess)."
    )
    exempt: list[str] = Field(
        default_factory=list,
        description="Envelope senders on the relay listener never rewritten (addresses, "
        "@domain, wildcards or /regex/).",
    )

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else _domain_name(value)

    @model_validator(mode="after")
    def _needs_domain(self) -> SRSSettings:
        if self.mode is not Mode.OFF and self.domain is None:
            raise ValueError("filters.srs.domain is required unless mode is off")
        return self


class DKIMSigningSettings(Section):
    """DKIM signing (dkimpy) of outgoing mail from the relay listener, with keys made on
    the appliance (`postwall dkim generate|rotate|show`, <data_dir>/dkim/<domain>/)."""

    enabled: bool = Field(False, description="Sign outgoing mail.")
    domains: list[str] = Field(
        default_factory=list,
        description="Domains to sign for; a message is signed for its From domain (or "
        "the nearest parent listed). Empty: every domain with a key under "
        "<data_dir>/dkim. A listed domain without a usable key is an error (on_key_error).",
    )
    on_key_error: Literal["send_unsigned", "tempfail"] = Field(
        "send_unsigned",
        description="When the key file is missing or unreadable: send the message "
        "unsigned (logged), or answer 451 so the internal server retries.",
    )
    headers: list[str] = Field(
        default_factory=lambda: [
            "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
            "mime-version", "content-type", "content-transfer-encoding", "content-id",
            "content-description", "in-reply-to", "references", "list-id", "list-help",
            "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
            "list-owner", "list-archive",
        ],
        description="Header fields signed when present; From and Subject are also "
        "over-signed so none can be added after signing.",
    )

    @field_validator("domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        return _domain_names(values)

    @field_validator("headers")
    @classmethod
    def _headers(cls, values: list[str]) -> list[str]:
        names = [v.strip().lower() for v in values]
        if "from" not in names:
            raise ValueError("dkim_signing.headers must include 'from' (RFC 6376 5.4)")
        for name in names:
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise ValueError(f"invalid header field name {name!r}")
        return names


class FilterSection(Section):
    ip_lists: IPListSettings = Field(default_factory=IPListSettings)
    address_lists: AddressListSettings = Field(default_factory=AddressListSettings)
    regex: RegexSettings = Field(default_factory=RegexSettings)
    attachments: AttachmentSettings = Field(default_factory=AttachmentSettings)
    size: SizeSettings = Field(default_factory=SizeSettings)
    clamav: ClamAVSettings = Field(default_factory=ClamAVSettings)
    greylist: GreylistSettings = Field(default_factory=GreylistSettings)
    penalty_box: PenaltyBoxSettings = Field(default_factory=PenaltyBoxSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    early_talker: EarlyTalkerSettings = Field(default_factory=EarlyTalkerSettings)
    helo: HeloSettings = Field(default_factory=HeloSettings)
    fcrdns: FCrDNSSettings = Field(default_factory=FCrDNSSettings)
    sender: SenderSettings = Field(default_factory=SenderSettings)
    spf: SPFSettings = Field(default_factory=SPFSettings)
    dkim: DKIMSettings = Field(default_factory=DKIMSettings)
    dmarc: DMARCSettings = Field(default_factory=DMARCSettings)
    dnsbl: DNSBLSettings = Field(default_factory=DNSBLSettings)
    uribl: URIBLSettings = Field(default_factory=URIBLSettings)
    bayes: BayesSettings = Field(default_factory=BayesSettings)
    personal_blacklist: FilterSettings = Field(default_factory=FilterSettings)
    recipient_verify: RecipientVerifySettings = Field(
        default_factory=RecipientVerifySettings
    )
    batv: BATVSettings = Field(default_factory=BATVSettings)
    srs: SRSSettings = Field(default_factory=SRSSettings)


class AutowhitelistSettings(Section):
    enabled: bool = Field(True, description="Recipients of outgoing mail become whitelisted.")
    days: int = Field(365, ge=1, le=3650, description="How long an autowhitelist entry lives.")


class StoreSettings(Section):
    spam: bool = Field(True, description="Keep a copy of quarantined/rejected spam in spam/.")
    notspam: bool = Field(False, description="Keep a copy of delivered ham in notspam/.")
    okmail: bool = Field(False, description="Keep whitelisted/unprocessed mail in okmail/.")
    discarded: bool = Field(True, description="Keep discarded mail in discarded/.")
    archive: bool = Field(False, description="Keep every accepted message in archive/.")
    retention_days: int = Field(14, ge=1, description="Kept mail older than this is deleted.")
    max_files_per_folder: int = Field(
        100000, ge=10, description="Oldest kept mail is deleted beyond this count per folder."
    )
    log_retention_days: int = Field(
        90, ge=1, description="Message log rows older than this are deleted."
    )


class MetricsSettings(Section):
    listen: str | None = Field(
        "127.0.0.1:9125", description="Prometheus metrics endpoint; empty to disable."
    )

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str | None) -> str | None:
        if value:
            parse_hostport(value)
        return value or None


class DNSSettings(Section):
    nameservers: list[str] = Field(
        default_factory=list,
        description="Resolvers to ask, as IP or IP:PORT ([v6]:PORT); empty = the host's "
        "/etc/resolv.conf. Use a local caching resolver: public ones are refused by most "
        "DNS blocklists.",
    )
    timeout: float = Field(2.0, gt=0, le=30, description="Seconds to wait for one server.")
    lifetime: float = Field(
        4.0, gt=0, le=60, description="Seconds for one question in all, across servers and retries."
    )
    cache_size: int = Field(
        20000, ge=0, description="Answers kept per worker (0 disables the cache)."
    )
    max_ttl: int = Field(
        86400, ge=0, description="Positive answers are cached for their TTL, at most this long."
    )
    negative_ttl: int = Field(
        900, ge=0, description="Upper bound in seconds for caching 'no such name/no data'."
    )
    error_ttl: int = Field(
        5, ge=0, description="Seconds a failed question (timeout, SERVFAIL) is not asked again."
    )

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                parse_nameserver(entry)
            except ValueError as exc:
                raise ValueError(f"nameserver {entry!r}: expected IP or IP:PORT ({exc})") from None
        return value


class BackupSMBSettings(Section):
    """An SMB/CIFS share (Windows or Samba) the backups are uploaded to."""

    server: str = Field(
        ..., min_length=1, max_length=255, description="Host name or IP address of the file server."
    )
    port: int = Field(445, ge=1, le=65535, description="SMB port of the file server.")
    share: str = Field(
        ..., min_length=1, max_length=80,
        description="Share name as the server exports it; spaces are fine ('ASSP Backups').",
    )
    folder: str = Field(
        "", max_length=1000,
        description="Sub-folder of the share that holds the backups ('' = the share's top). "
        "It must exist: a missing folder is reported, never created, so a typo cannot "
        "scatter backups over the share.",
    )
    credentials_file: Path = Field(
        ..., description="File with 'username=', 'password=' and optional 'domain=' lines "
        "(the smbclient -A / mount.cifs format). Must be mode 0600 and owned by the user "
        "running the backup, or the command refuses.",
    )

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        text = value.strip().strip("\\/")
        if not text or any(c in text for c in "\\/ "):
            raise ValueError(f"expected a host name or address, got {value!r}")
        return text

    @field_validator("share")
    @classmethod
    def _share(cls, value: str) -> str:
        if any(c in value for c in '\\/:*?"<>|') or value != value.strip():
            raise ValueError(f"invalid share name {value!r}")
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        parts = [p for p in value.replace("\\", "/").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"folder {value!r} must not contain '.' or '..'")
        return "/".join(parts)


class BackupRetentionSettings(Section):
    """Which backups stay on each target after a successful run (grandfather-father-son):
    the newest backup of each of the last N days, weeks and months. Everything else
    matching this host's backup names is deleted; other files are never touched."""

    daily: int = Field(7, ge=0, le=3650, description="Days for which the newest backup is kept.")
    weekly: int = Field(4, ge=0, le=520, description="ISO weeks for which the newest is kept.")
    monthly: int = Field(6, ge=0, le=240, description="Months for which the newest is kept.")


DEFAULT_BACKUP_SYSTEM_FILES: tuple[str, ...] = (
    "/etc/postfix/main.cf",
    "/etc/postfix/master.cf",
    "/etc/postfix/transport",
    "/etc/clamav/clamd.conf",
    "/etc/clamav/freshclam.conf",
)


class BackupSettings(Section):
    """`postwall backup` and `postwall restore` (see README, "Backups and restore")."""

    directory: Path | None = Field(
        None, description="Local directory (or mounted disk) that receives the backups; "
        "empty = none. Created with mode 0700 if missing.",
    )
    smb: BackupSMBSettings | None = Field(
        None, description="An SMB share that receives the backups; empty = none."
    )
    encryption_key_file: Path | None = Field(
        None, description="Key file made by `postwall backup keygen` (mode 0600): backups "
        "are encrypted and authenticated (AES-256-GCM). Empty = not encrypted. Keep a copy "
        "of the key away from the appliance: without it no backup can be restored.",
    )
    include_mail: bool = Field(
        False, description="Also back up the kept mail folders (quarantine, archive...)."
    )
    system_files: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BACKUP_SYSTEM_FILES),
        description="Configuration files of the services the roles manage (Postfix, "
        "ClamAV) to include; missing ones are skipped with a note. Restored only with "
        "`postwall restore --only system`.",
    )
    retention: BackupRetentionSettings = Field(default_factory=BackupRetentionSettings)
    verify: bool = Field(
        True, description="After each backup, restore it into a scratch directory and "
        "check every hash, the configuration and the databases' row counts. Only a "
        "verified backup counts as the last good one.",
    )

    @field_validator("directory", "encryption_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("system_files")
    @classmethod
    def _absolute(cls, values: list[str]) -> list[str]:
        for value in values:
            path = Path(value)
            if not path.is_absolute() or ".." in path.parts:
                raise ValueError(f"system file {value!r} must be an absolute path without '..'")
        return values

    @property
    def configured(self) -> bool:
        return self.directory is not None or self.smb is not None


class WebUISettings(Section):
    """`postwall webui serve`: the administration UI (HTTPS only). Read when the UI starts,
    so changes here take effect at its restart; they can only be made in the base file."""

    listen: str = Field(
        "127.0.0.1:8443",
        description="ADDRESS:PORT of the web UI's HTTPS listener. Loopback by default: "
        "open it (e.g. 0.0.0.0:8443) only towards the administrators' network.",
    )
    cert_file: Path | None = Field(
        None, description="PEM certificate chain for HTTPS (the webui role generates a "
        "self-signed one unless you give your own). The UI refuses to start without one."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file (mode 0600).")
    threads: int = Field(8, ge=1, le=64, description="Requests served at the same time.")
    session_idle_minutes: int = Field(
        30, ge=1, le=1440, description="A session without a request for this long ends."
    )
    session_max_hours: int = Field(
        12, ge=1, le=168, description="Every session ends this long after its login."
    )
    login_max_failures: int = Field(
        5, ge=1, le=100,
        description="Wrong passwords in a row that lock an account (for login_lockout_minutes).",
    )
    login_lockout_minutes: int = Field(
        15, ge=1, le=1440, description="How long a locked account stays locked."
    )
    login_failures_per_ip: int = Field(
        20, ge=1, le=10000,
        description="Failed logins from one client address within 15 minutes after which "
        "that address may not try again until older failures age out (guessing many names).",
    )
    password_min_length: int = Field(
        12, ge=8, le=128, description="Shortest password a user may choose."
    )

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @model_validator(mode="after")
    def _both_or_none(self) -> WebUISettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("webui.cert_file and webui.key_file must be set together")
        return self


class OpsSettings(Section):
    """`postwall upgrade` and the maintenance window of upgrades and restores (see
    README, "Upgrades and rollback")."""

    service_manager: Literal["auto", "systemd", "process"] = Field(
        "auto",
        description="How services are stopped and started: systemd (systemctl), process "
        "(plain processes with pid files in data_dir/run, for hosts and containers "
        "without systemd) or auto (systemd when it runs as PID 1).",
    )
    serve_workers: int | None = Field(
        None, ge=1, le=64,
        description="--workers for `postwall serve` under the process manager (default: "
        "one per core); systemd takes it from the unit.",
    )
    keep_releases: int = Field(
        3, ge=2, le=50,
        description="Releases kept in /opt/postwall/releases after an upgrade (the current "
        "and the previous one are never removed).",
    )
    health_timeout: float = Field(
        60.0, gt=0, le=600,
        description="Seconds the health gate after a restart may take in all before the "
        "upgrade (or restore) counts as failed and is rolled back.",
    )
    drain_timeout: float = Field(
        30.0, gt=0, le=600,
        description="Seconds the maintenance window waits for messages in flight to "
        "finish before it stops the services anyway.",
    )
    pip_args: list[str] = Field(
        default_factory=list,
        description="Extra arguments for pip when a release is installed, e.g. "
        "['--index-url', 'https://pypi.internal.example/simple'].",
    )
    compile_bytecode: bool = Field(
        True, description="Compile a new release's Python files at install (the service "
        "user cannot write them later, so every start would compile them again).",
    )
def _smarthost(value: str | None) -> str | None:
    """HOST:PORT where HOST may be a name (a smarthost is not a listener)."""
    if not value:
        return None
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not DOMAIN_RE.match(host):
            raise ValueError(f"invalid host name in {value!r}") from None
    return value.strip()


class NotificationSettings(Section):
    """Mail to the administrator about events that need a human (appliance/notify)."""

    admin_address: str | None = Field(
        None, description="Who gets event mails (a virus, a suspended DNS list zone, clamd "
        "or Postfix down, a failed backup, a full disk) and the daily summary. Empty: "
        "events are only logged."
    )
    sender: str | None = Field(
        None, description="From address of the notifications (default: postwall@<smtp."
        "hostname>)."
    )
    fallback_smarthost: str | None = Field(
        None, description="HOST:PORT of another mail server (e.g. the internal one) used "
        "when the local Postfix does not take a notification, so that 'Postfix down' still "
        "gets out. Without it such mail waits in <data_dir>/notify/spool and is retried."
    )
    min_interval_seconds: float = Field(
        900.0, ge=0, le=86400, description="At least this long between two mails of one "
        "kind (virus, clamd_down ...); incidents opened meanwhile are mailed together "
        "afterwards. A repeat of an open incident is only counted."
    )
    event_quiet_seconds: float = Field(
        3600.0, ge=1, le=7 * 86400, description="One-off events (the same virus again) "
        "count into their open incident until none came for this long."
    )
    monitor_interval_seconds: float = Field(
        60.0, ge=1, le=3600, description="How often worker 0 looks at clamd, Postfix and "
        "the disk, and retries spooled notifications."
    )
    disk_percent: float = Field(
        90.0, gt=0, le=100, description="Used space (or inodes) of the data directory's "
        "file system from which a 'disk full' notification goes out."
    )
    send_timeout: float = Field(
        10.0, gt=0, le=120, description="Seconds to connect and hand over one notification."
    )
    summary_enabled: bool = Field(
        True, description="Mail a daily summary (messages by action, top blocked senders "
        "and clients, top symbols, classifier training) to admin_address."
    )
    summary_hour: int = Field(6, ge=0, le=23, description="Hour of the day (UTC) from "
                              "which the daily summary goes out.")

    @field_validator("fallback_smarthost")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return _smarthost(value)

    @field_validator("admin_address", "sender")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if not value:
            return None
        local, at, domain = value.strip().rpartition("@")
        if not at or not local or not DOMAIN_RE.match(domain) or any(
                c in value for c in " <>,;\r\n"):
            raise ValueError(f"expected one address like admin@example.com, got {value!r}")
        return value.strip()


class SelfCheckSettings(Section):
    """What `postwall status` and the dashboard check about the appliance itself."""

    public_address: str | None = Field(
        None, description="The appliance's public IP address (its MX's A record). Needed "
        "to check its PTR and whether it is on the configured DNSBLs; empty: the inbound "
        "listener's address if it is public, else those checks are 'unknown'."
    )
    postfix_expected_file: Path = Field(
        Path("/etc/postfix/postwall-expected.conf"), description="`postconf -n` as the "
        "postfix role left it; the live configuration is compared with it."
    )
    postfix_config_dir: Path | None = Field(
        None, description="Postfix configuration directory to check (default: Postfix's own)."
    )
    clamd_database_dir: Path = Field(
        Path("/var/lib/clamav"), description="clamd's DatabaseDirectory: its newest file "
        "dates the signatures when clamd's VERSION answer carries no date."
    )
    signatures_warn_days: float = Field(2.0, gt=0, description="Signatures older than "
                                        "this are a warning.")
    signatures_fail_days: float = Field(7.0, gt=0, description="Signatures older than "
                                        "this are a failure.")
    certificate_warn_days: int = Field(21, ge=1, le=365, description="A certificate "
                                       "expiring within this many days is a warning.")

    @field_validator("public_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value:
            ipaddress.ip_address(value.strip())
            return value.strip()
        return None


class Config(Section):
    listen: ListenSettings = Field(default_factory=ListenSettings)
    relay_networks: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/8"],
        description="Clients allowed on the relay listener (ASSP allowRelayCon).",
    )
    downstream: DownstreamSettings = Field(default_factory=DownstreamSettings)
    local_domains: list[str] = Field(
        default_factory=list,
        description="Domains whose mail we accept on the inbound listener; any other "
        "recipient gets 550 5.7.1 (no open relay). '*.example.com' covers subdomains.",
    )
    limits: LimitSettings = Field(default_factory=LimitSettings)
    data_dir: Path = Field(Path("/var/lib/postwall"), description="State and kept mail.")
    test_mode: bool = Field(
        False, description="Every block becomes a tag (ASSP allTestMode): try rules safely."
    )
    smtp: SMTPSettings = Field(default_factory=SMTPSettings)
    dns: DNSSettings = Field(default_factory=DNSSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    filters: FilterSection = Field(default_factory=FilterSection)
    autowhitelist: AutowhitelistSettings = Field(default_factory=AutowhitelistSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    block_reports: BlockReportSettings = Field(default_factory=BlockReportSettings)
    dkim_signing: DKIMSigningSettings = Field(default_factory=DKIMSigningSettings)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    webui: WebUISettings = Field(default_factory=WebUISettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    self_checks: SelfCheckSettings = Field(default_factory=SelfCheckSettings)

    @field_validator("relay_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr(v) for v in values]

    @field_validator("local_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        return _domain_patterns(values)
