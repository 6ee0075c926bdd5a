"""Connection counts shared by all worker processes, so `max_connections` and
`max_connections_per_ip` limit the appliance, not each worker.

Per-IP counts live in a fixed table of buckets indexed by a stable hash of the address:
two addresses that share a bucket share a limit, which errs on the side of refusing (with
a 4xx, so the client retries) and is rare with this many buckets. Each worker counts in
its own segment, so the supervisor can zero a crashed worker's counts before restarting
it instead of leaking them."""

from __future__ import annotations

import multiprocessing
import zlib
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

BUCKETS = 8192
SEGMENT = BUCKETS + 1  # the last slot of a segment holds that worker's total


def new_shared_counts(workers: int, ctx: Any = None) -> SynchronizedArray[int]:
    context = ctx or multiprocessing.get_context("spawn")
    return context.Array("i", SEGMENT * workers, lock=True)


def bucket(ip: str) -> int:
    return zlib.crc32(ip.encode("ascii", "replace")) % BUCKETS


def reset_worker(shared: SynchronizedArray[int], worker: int) -> None:
    with shared.get_lock():
        counts = shared.get_obj()
        start = worker * SEGMENT
        for slot in range(start, start + SEGMENT):
            counts[slot] = 0


class ConnectionCounts:
    def __init__(self, shared: SynchronizedArray[int] | None = None, worker: int = 0) -> None:
        self.shared = shared if shared is not None else new_shared_counts(1)
        self.workers = len(self.shared) // SEGMENT
        self.offset = worker * SEGMENT

    def _sum(self, counts: Any, slot: int) -> int:
        return sum(counts[w * SEGMENT + slot] for w in range(self.workers))

    def try_open(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a new connection, or say which limit it would exceed (and count nothing)."""
        index = bucket(ip)
        with self.shared.get_lock():
            counts = self.shared.get_obj()
            if self._sum(counts, BUCKETS) >= max_total:
                return "max_connections"
            if self._sum(counts, index) >= max_per_ip:
                return "max_connections_per_ip"
            counts[self.offset + BUCKETS] += 1
            counts[self.offset + index] += 1
        return None

    def close(self, ip: str) -> None:
        index = bucket(ip)
        with self.shared.get_lock():
            counts = self.shared.get_obj()
            counts[self.offset + BUCKETS] = max(0, counts[self.offset + BUCKETS] - 1)
            counts[self.offset + index] = max(0, counts[self.offset + index] - 1)

    def total(self) -> int:
        with self.shared.get_lock():
            return self._sum(self.shared.get_obj(), BUCKETS)

    def for_ip(self, ip: str) -> int:
        with self.shared.get_lock():
            return self._sum(self.shared.get_obj(), bucket(ip))
