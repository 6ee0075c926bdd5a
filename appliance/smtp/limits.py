"""Connection counts shared by all worker processes, so `max_connections` and
`max_connections_per_ip` limit the appliance, not each worker.

The counts live in a small memory-mapped file under `data_dir/run/`, guarded by an
advisory lock (no helper process needed). Per-IP counts are a fixed table of buckets
indexed by a stable hash of the address: two addresses that share a bucket share a limit,
which errs on the side of refusing (with a 4xx, so the client retries) and is rare with
this many buckets. Each worker counts in its own segment, so the supervisor can zero a
crashed worker's counts before restarting it instead of leaking them."""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib
from pathlib import Path

BUCKETS = 8192
SEGMENT = BUCKETS + 1  # the last slot of a segment holds that worker's total
SLOT = 4  # bytes per counter (int32)


def bucket(ip: str) -> int:
    return zlib.crc32(ip.encode("ascii", "replace")) % BUCKETS


def create_counts_file(path: Path, workers: int) -> None:
    """A zeroed file for `workers` segments (done by the supervisor before any worker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(SEGMENT * SLOT * workers)


def reset_worker(path: Path, worker: int) -> None:
    with open(path, "r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(worker * SEGMENT * SLOT)
        handle.write(bytes(SEGMENT * SLOT))
        handle.flush()


class ConnectionCounts:
    """Counts in a shared file (`path`), or in private memory for a single process."""

    def __init__(self, path: Path | None = None, worker: int = 0) -> None:
        self._fd: int | None = None
        if path is None:
            self._buffer: mmap.mmap | bytearray = bytearray(SEGMENT * SLOT)
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._buffer = mmap.mmap(self._fd, 0)
        self.counts = memoryview(self._buffer).cast("i")
        self.workers = len(self.counts) // SEGMENT
        self.offset = worker * SEGMENT

    def _lock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _sum(self, slot: int) -> int:
        counts = self.counts
        return sum(counts[w * SEGMENT + slot] for w in range(self.workers))

    def try_open(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a new connection, or say which limit it would exceed (and count nothing)."""
        index = bucket(ip)
        self._lock()
        try:
            if self._sum(BUCKETS) >= max_total:
                return "max_connections"
            if self._sum(index) >= max_per_ip:
                return "max_connections_per_ip"
            self.counts[self.offset + BUCKETS] += 1
            self.counts[self.offset + index] += 1
        finally:
            self._unlock()
        return None

    def close(self, ip: str) -> None:
        index = bucket(ip)
        self._lock()
        try:
            for slot in (self.offset + BUCKETS, self.offset + index):
                self.counts[slot] = max(0, self.counts[slot] - 1)
        finally:
            self._unlock()

    def total(self) -> int:
        return self._sum(BUCKETS)

    def for_ip(self, ip: str) -> int:
        return self._sum(bucket(ip))
