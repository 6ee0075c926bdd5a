"""Unknown recipients per client over time (directory-harvest protection), per worker.

The per-connection count lives on the ConnectionContext; this keeps the count across a
client's connections within a window. Bounded: a flood of clients evicts the oldest."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_CLIENTS = 20000


class HarvestCounter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def add(self, client: str, window: float, keep: int) -> int:
        """Count one unknown recipient for `client`; return its count within `window`
        (only the latest `keep` events are kept: enough to compare with the limit)."""
        now = self._clock()
        events = self._seen.get(client)
        if events is None:
            events = self._seen[client] = deque(maxlen=max(1, keep))
            while len(self._seen) > MAX_CLIENTS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(client)
        events.append(now)
        while events and events[0] <= now - window:
            events.popleft()
        return len(events)

    def count(self, client: str, window: float) -> int:
        events = self._seen.get(client)
        if not events:
            return 0
        cutoff = self._clock() - window
        return sum(1 for at in events if at > cutoff)
