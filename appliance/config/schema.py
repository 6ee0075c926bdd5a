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


class ScoringSettings(Section):
    thresholds: Thresholds = Field(default_factory=Thresholds)
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Symbol name -> weight, overriding the filters' declared defaults.",
    )
    group_caps: dict[str, float] = Field(
        default_factory=dict, description="Symbol group -> largest total it may contribute."
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


class IPListSettings(FilterSettings):
    allow: list[str] = Field(
        default_factory=list,
        description="Client networks (CIDR) whose mail is accepted without scoring "
        "(ASSP whiteListedIPs). A virus is still refused.",
    )
    deny: list[str] = Field(
        default_factory=list, description="Client networks (CIDR) refused at connect with 554."
    )

    @field_validator("allow", "deny")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr(v) for v in values]


class AddressListSettings(FilterSettings):
    whitelist: list[str] = Field(
        default_factory=list,
        description="Senders never scored: addresses, @domain, *.wildcards or /regex/ "
        "(ASSP whiteListedDomains). Entries added in the UI or by mail live in the database.",
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


class WeightedPattern(Section):
    pattern: str = Field(description="Python regular expression (case-insensitive).")
    weight: float = Field(1.0, description="Multiplies the symbol's weight.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
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
        re.compile(value)
        return value


class SizeSettings(FilterSettings):
    max_size: int | None = Field(
        None, ge=1, description="Score mail above this size (octets); empty uses no size score."
    )


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
        name = value.strip().lower().rstrip(".")
        if not DOMAIN_RE.match(name):
            raise ValueError(f"invalid domain name {value!r}")
        return name


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


class FilterSection(Section):
    ip_lists: IPListSettings = Field(default_factory=IPListSettings)
    address_lists: AddressListSettings = Field(default_factory=AddressListSettings)
    regex: RegexSettings = Field(default_factory=RegexSettings)
    attachments: AttachmentSettings = Field(default_factory=AttachmentSettings)
    size: SizeSettings = Field(default_factory=SizeSettings)
    bayes: BayesSettings = Field(default_factory=BayesSettings)
    personal_blacklist: FilterSettings = Field(default_factory=FilterSettings)


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
    tls: TLSSettings = Field(default_factory=TLSSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    filters: FilterSection = Field(default_factory=FilterSection)
    autowhitelist: AutowhitelistSettings = Field(default_factory=AutowhitelistSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    block_reports: BlockReportSettings = Field(default_factory=BlockReportSettings)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")

    @field_validator("relay_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [_cidr(v) for v in values]

    @field_validator("local_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            name = value.strip().lower().rstrip(".")
            bare = name[2:] if name.startswith("*.") else name
            if not DOMAIN_RE.match(bare):
                raise ValueError(f"invalid domain name {value!r}")
            out.append(name)
        return out
