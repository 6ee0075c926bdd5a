"""Personal blacklists in memory: one `ListIndex` per local user (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from appliance.lists import ListIndex, normalize_address


class PersonalBlacklists:
    """owner -> senders that owner refuses; built whole and swapped by the caller."""

    def __init__(self, entries: Mapping[str, Sequence[str]] | None = None) -> None:
        self._index = MappingProxyType({
            owner.lower(): ListIndex(values, f"persblack:{owner}")
            for owner, values in (entries or {}).items()
        })

    def __len__(self) -> int:
        return len(self._index)

    def match(self, owner: str, sender: str) -> str | None:
        """The owner's entry matching `sender`, or None."""
        if not self._index or not sender:
            return None
        index = self._index.get(normalize_address(owner))
        return index.match(sender) if index is not None else None
