"""The filters in pipeline order, their declared symbols, and building them from config.

A filter's settings live under `filters.<name>` unless the class names another section
(`section`), as the recipient lists share `filters.address_lists` with the sender lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from appliance.filters.address_lists import AddressListFilter, RecipientListFilter
from appliance.filters.attachments import AttachmentFilter
from appliance.filters.backscatter import BATVBounceFilter, BATVRecipientFilter, BATVSignFilter
from appliance.filters.base import Filter, error_symbol_name
from appliance.filters.bayes import BayesFilter
from appliance.filters.clamav import ClamAVFilter
from appliance.filters.dkim import DKIMFilter
from appliance.filters.dmarc import DMARCFilter
from appliance.filters.dnsbl import DNSBLFilter, DNSBLPrefetch
from appliance.filters.early_talker import EarlyTalkerFilter
from appliance.filters.fcrdns import FCrDNSFilter, FCrDNSPrefetch
from appliance.filters.greylist import GreylistFilter
from appliance.filters.helo import HeloFilter
from appliance.filters.ip_lists import IPListFilter
from appliance.filters.penalty_box import PenaltyBoxFilter
from appliance.filters.personal_blacklist import PersonalBlacklistFilter
from appliance.filters.rate_limits import ConnectionRateFilter, MessageRateFilter
from appliance.filters.recipients import RecipientVerifyFilter
from appliance.filters.regex import RegexFilter
from appliance.filters.sender import SenderFilter
from appliance.filters.size import SizeFilter
from appliance.filters.spf import SPFFilter
from appliance.filters.srs import SRSForwardFilter, SRSReverseFilter
from appliance.filters.uribl import URIBLFilter
from appliance.verdict import Mode, Symbol, SymbolSpec

if TYPE_CHECKING:
    from appliance.config.schema import Config, FilterSettings
    from appliance.services import Services

# Pipeline order (the pipeline groups them by stage, keeping this order within a stage):
# cheap and decisive checks first.
FILTER_CLASSES: tuple[type[Filter], ...] = (
    IPListFilter,
    ConnectionRateFilter,  # connect: counts every connection the IP lists did not allow
    PenaltyBoxFilter,  # connect: refuses bad clients before any DNS is asked for them
    DNSBLPrefetch,  # connect: only starts the lookups, before anything that waits
    FCrDNSPrefetch,  # connect: only starts the reverse DNS lookups
    EarlyTalkerFilter,  # greeting: after the greeting delay, before the 220
    HeloFilter,
    MessageRateFilter,  # mail: before the sender lists (the limit is the client's)
    AddressListFilter,
    DNSBLFilter,  # mail stage: reads the prefetched answers; whitelisted senders skip it
    FCrDNSFilter,  # mail stage: reads the prefetched reverse DNS, like DNSBLFilter
    SenderFilter,  # after the sender lists: a whitelisted sender is not looked up
    SPFFilter,  # mail stage, after the sender lists (a whitelisted sender is not checked)
    BATVSignFilter,  # mail, relay listener: tags the outgoing envelope sender
    SRSForwardFilter,  # mail, relay listener: rewrites the sender of forwarded mail
    SRSReverseFilter,  # rcpt: first, so the others see the bounce's real recipient
    BATVRecipientFilter,  # rcpt: strips the tag before any recipient check
    RecipientVerifyFilter,  # rcpt: unknown users get 550 before lists and greylisting
    RecipientListFilter,
    GreylistFilter,  # rcpt: after the recipient lists (noprocessing is never delayed)
    PersonalBlacklistFilter,
    SizeFilter,
    BATVBounceFilter,  # data: bounces without a valid tag
    AttachmentFilter,
    ClamAVFilter,  # waits on clamd; forced: runs for whitelisted mail too
    RegexFilter,
    URIBLFilter,
    DKIMFilter,
    DMARCFilter,  # after DKIM: it reads the SPF and DKIM results
    BayesFilter,
)

# Symbols that mark mail as red: it never feeds the autowhitelist or the corpora.
RED_GROUP = "red"
RED_SYMBOLS = frozenset({"REDLISTED", "RED_RE"})


def settings_section(cls: type[Filter]) -> str:
    return getattr(cls, "section", None) or cls.name


def settings_for(cls: type[Filter], config: Config) -> FilterSettings:
    section = settings_section(cls)
    try:
        return getattr(config.filters, section)
    except AttributeError:
        raise ValueError(f"filter {cls.name} has no settings section filters.{section}") from None


def declared_symbols(
    classes: Iterable[type[Filter]] = FILTER_CLASSES, config: Config | None = None
) -> dict[str, SymbolSpec]:
    """Every symbol any filter may emit, including the zero-weight NAME_ERROR symbol the
    pipeline records when a filter fails, and, given `config`, the symbols it declares
    (one per DNS list zone). Two filters may share a symbol only with an identical
    declaration."""
    declared: dict[str, SymbolSpec] = {}
    owner: dict[str, str] = {}

    def add(spec: SymbolSpec, filter_name: str) -> None:
        known = declared.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(
                f"symbol {spec.name} declared differently by {owner[spec.name]} and {filter_name}"
            )
        declared[spec.name] = spec
        owner.setdefault(spec.name, filter_name)

    for cls in classes:
        for spec in cls.symbols:
            add(spec, cls.name)
        if config is not None:
            for spec in cls.configured_symbols(settings_for(cls, config)):
                add(spec, cls.name)
        add(SymbolSpec(error_symbol_name(cls.name), 0.0, f"The {cls.name} check failed "
                       "(crash or timeout); its on_error policy applied"), cls.name)
    return declared


def validate_scoring(config: Config, declared: Mapping[str, SymbolSpec] | None = None) -> None:
    """Every weight names a declared symbol and every group cap a declared group; a typo
    in either is an error, not a silently ignored setting."""
    declared = declared_symbols(config=config) if declared is None else declared
    unknown = sorted(set(config.scoring.weights) - set(declared))
    if unknown:
        raise ValueError(f"scoring.weights names undeclared symbol(s): {', '.join(unknown)}")
    groups = {spec.group for spec in declared.values() if spec.group}
    unknown = sorted(set(config.scoring.group_caps) - groups)
    if unknown:
        raise ValueError(f"scoring.group_caps names unknown group(s): {', '.join(unknown)}")


def build_filters(
    config: Config,
    services: Services,
    classes: Iterable[type[Filter]] = FILTER_CLASSES,
) -> list[Filter]:
    """Instances of the enabled filters (mode not off), in pipeline order."""
    classes = tuple(classes)
    validate_scoring(config, declared_symbols(classes, config))
    filters: list[Filter] = []
    for cls in classes:
        settings = settings_for(cls, config)
        if settings.mode is Mode.OFF:
            continue
        filters.append(cls(settings, config.scoring.weights, config, services))
    return filters


def is_red(symbols: Iterable[Symbol]) -> bool:
    """True when the mail is redlisted (REDLISTED or RED_RE among its symbols)."""
    return any(symbol.name in RED_SYMBOLS for symbol in symbols)
