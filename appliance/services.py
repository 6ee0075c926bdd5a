"""What the pipeline hands to every filter besides the configuration (no I/O here).

`ListRegistry` holds the compiled white/black/red/... lists and IP networks. It is built
from the configuration's entries plus the database's active values (the storage module
provides `active_values()`); `rebuild` swaps in a complete new set at once, so a lookup
never sees half of an update.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from appliance.config.schema import file_ref
from appliance.listfiles import Kind, ListFiles, split_refs
from appliance.lists import IPIndex, ListIndex

if TYPE_CHECKING:
    from appliance.classifier.table import TokenTable
    from appliance.client_state import ClientState
    from appliance.config.schema import Config
    from appliance.dns import Resolver
    from appliance.personal import PersonalBlacklists
    from appliance.recipients.verifier import RecipientVerifier
    from appliance.storage.facade import Storage

log = logging.getLogger("postwall.services")

ADDRESS_LISTS: tuple[str, ...] = (
    "whitelist",
    "blacklist",
    "redlist",
    "noprocessing",
    "spamlovers",
    "autowhitelist",
    "valid_recipients",  # filters.recipient_verify, method static
)
IP_LISTS: tuple[str, ...] = ("ip_allow", "ip_deny")
LIST_NAMES: tuple[str, ...] = ADDRESS_LISTS + IP_LISTS


def _config_settings(config: Config) -> dict[str, list[str]]:
    addresses = config.filters.address_lists
    networks = config.filters.ip_lists
    return {
        "whitelist": list(addresses.whitelist),
        "blacklist": list(addresses.blacklist),
        "redlist": list(addresses.redlist),
        "noprocessing": list(addresses.noprocessing),
        "spamlovers": list(addresses.spamlovers),
        "autowhitelist": [],
        "valid_recipients": list(config.filters.recipient_verify.valid_recipients),
        "ip_allow": list(networks.allow),
        "ip_deny": list(networks.deny),
    }


def config_entries(config: Config) -> dict[str, list[str]]:
    """Each list's entries as written in the configuration (the autowhitelist has none),
    without its `file:` entries (see `config_files`)."""
    return {name: split_refs(values)[0] for name, values in _config_settings(config).items()}


def config_files(config: Config) -> dict[str, list[str]]:
    """Each list's files (`file:/PATH` entries in the configuration), by list name."""
    return {name: split_refs(values)[1] for name, values in _config_settings(config).items()}


def file_kind(list_name: str) -> Kind:
    return Kind.NETWORK if list_name in IP_LISTS else Kind.ADDRESS


def list_file_refs(config: Config) -> set[tuple[str, Kind]]:
    """Every list file the configuration names, with the kind of its lines (the regex
    filter's pattern files included)."""
    refs = {(path, file_kind(name)) for name, paths in config_files(config).items()
            for path in paths}
    regex = config.filters.regex
    for patterns in (regex.bomb_re, regex.bomb_subject_re, regex.white_re, regex.red_re):
        refs.update((path, Kind.PATTERN) for p in patterns
                    if (path := file_ref(p.pattern)) is not None)
    return refs


@dataclass(frozen=True, slots=True)
class _Indexes:
    addresses: Mapping[str, ListIndex]
    networks: Mapping[str, IPIndex]


def _build(config: Config | None, db_values: Mapping[str, Sequence[str]] | None,
           files: ListFiles | None = None) -> _Indexes:
    entries = config_entries(config) if config is not None else {n: [] for n in LIST_NAMES}
    if config is not None and files is not None:
        for name, paths in config_files(config).items():
            for path in paths:
                entries[name].extend(files.entries(path, file_kind(name)))
    for name, values in (db_values or {}).items():
        if name not in entries:
            log.warning("ignoring values for unknown list %r", name)
            continue
        entries[name].extend(values)
    return _Indexes(
        addresses=MappingProxyType({n: ListIndex(entries[n], n) for n in ADDRESS_LISTS}),
        networks=MappingProxyType({n: IPIndex(entries[n], n) for n in IP_LISTS}),
    )


class ListRegistry:
    """One `ListIndex` per address list and one `IPIndex` per IP list, by name."""

    def __init__(
        self,
        config: Config | None = None,
        db_values: Mapping[str, Sequence[str]] | None = None,
        files: ListFiles | None = None,
    ) -> None:
        self._indexes = _build(config, db_values, files)

    def rebuild(self, config: Config, db_values: Mapping[str, Sequence[str]],
                files: ListFiles | None = None) -> None:
        """Recompile every list from `config` plus `db_values` (list name -> entries, e.g.
        storage's `active_values()`) plus the last good contents of the list `files` the
        configuration names; unknown names are logged and ignored."""
        self._indexes = _build(config, db_values, files)  # one assignment: old or new

    def get(self, name: str) -> ListIndex:
        return self._indexes.addresses[name]

    def ip(self, name: str) -> IPIndex:
        return self._indexes.networks[name]

    def sizes(self) -> dict[str, int]:
        """Entries per list, for status pages and logs."""
        indexes = self._indexes
        return {
            **{name: len(index) for name, index in indexes.addresses.items()},
            **{name: len(index) for name, index in indexes.networks.items()},
        }

    @property
    def whitelist(self) -> ListIndex:
        return self._indexes.addresses["whitelist"]

    @property
    def blacklist(self) -> ListIndex:
        return self._indexes.addresses["blacklist"]

    @property
    def redlist(self) -> ListIndex:
        return self._indexes.addresses["redlist"]

    @property
    def noprocessing(self) -> ListIndex:
        return self._indexes.addresses["noprocessing"]

    @property
    def spamlovers(self) -> ListIndex:
        return self._indexes.addresses["spamlovers"]

    @property
    def autowhitelist(self) -> ListIndex:
        return self._indexes.addresses["autowhitelist"]

    @property
    def ip_allow(self) -> IPIndex:
        return self._indexes.networks["ip_allow"]

    @property
    def ip_deny(self) -> IPIndex:
        return self._indexes.networks["ip_deny"]


@dataclass
class Services:
    """Shared, already-built helpers the filters use.

    `resolver` is the worker's one DNS resolver (None where no DNS may be asked, as in
    unit tests), `storage` the persistent state (None without a data directory), and
    `dry_run` is True when the pipeline only explains (`postwall analyze`, the web UI's
    analyzer): stateful checks then report what they would do and write nothing."""

    lists: ListRegistry = field(default_factory=ListRegistry)
    resolver: Resolver | None = None
    storage: Storage | None = None
    dry_run: bool = False
    # The worker's penalty box, greylist cache and shared rate windows (None in unit
    # tests that do not need them: those checks then find nothing).
    clients: ClientState | None = None
    # The classifier's token table and the users' personal blacklists (None without a
    # database, e.g. in check-config).
    bayes: TokenTable | None = None
    personal: PersonalBlacklists | None = None
    # The list files the configuration names, with their last good contents (None: the
    # `file:` entries add nothing, as in pure unit tests).
    list_files: ListFiles | None = None
    # The worker's recipient verification cache and connections (outlive reloads); None:
    # the filter keeps its own.
    recipient_verifier: RecipientVerifier | None = None

    @classmethod
    def from_config(
        cls, config: Config, db_values: Mapping[str, Sequence[str]] | None = None
    ) -> Services:
        return cls(lists=ListRegistry(config, db_values))
