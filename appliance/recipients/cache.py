"""Positive/negative answers per worker with their own TTLs, least recently used out.

In memory per worker rather than shared: a hit is a dict probe on the hot path (a shared
table would cost a database round trip per recipient), and a stale answer is bounded by
the TTL; N workers cost at most N lookups per address per TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from appliance.recipients.result import Existence, Lookup


class LookupCache:
    def __init__(
        self, *, positive_ttl: float, negative_ttl: float, max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Lookup]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def configure(self, *, positive_ttl: float, negative_ttl: float, max_entries: int) -> None:
        self.positive_ttl, self.negative_ttl = positive_ttl, negative_ttl
        self.max_entries = max_entries
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    def get(self, key: Hashable) -> Lookup | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        expires, lookup = found
        if expires <= self._clock():
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return Lookup(lookup.existence, lookup.detail, cached=True)

    def put(self, key: Hashable, lookup: Lookup) -> None:
        """Keep an EXISTS or UNKNOWN answer; UNAVAILABLE is never cached (the next
        recipient asks again, so a recovered server is used at once)."""
        if lookup.existence is Existence.EXISTS:
            ttl = self.positive_ttl
        elif lookup.existence is Existence.UNKNOWN:
            ttl = self.negative_ttl
        else:
            return
        if ttl <= 0 or self.max_entries <= 0:
            return
        self._entries[key] = (self._clock() + ttl, lookup)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
