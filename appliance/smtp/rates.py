"""Connection and message rates per client, shared by every worker process.

The counters live in a memory-mapped file (``data_dir/run/rates``) guarded by an advisory
lock, like `ConnectionCounts`, so a limit holds for the appliance, not per worker, and
survives a restart of the workers. Each meter (connections per minute, messages per
hour) is a table of slots ``(tag, window, current, previous)``: a client's rate is the
sliding-window estimate ``previous * (1 - elapsed/window) + current`` over two fixed
windows, which needs no timestamps per event.

A client hashes to a bucket and may use any of the WAYS slots after it; the tag (a
second hash) tells clients apart, so two clients only share a count when their tags
collide too (one in four billion). When every slot is held by a live client, the
quietest one is evicted: under a flood of new clients the limit may miss a client, but
it never refuses one for another's traffic.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"PWRATE01"
HEADER_INTS = 4  # 16 bytes: magic and reserved
BUCKETS = 65536
WAYS = 8
SLOT_INTS = 4  # tag, window, current, previous
INT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Meter:
    index: int
    window: float  # seconds
    name: str


CONNECTIONS = Meter(0, 60.0, "connections per minute")
MESSAGES = Meter(1, 3600.0, "messages per hour")
METERS = (CONNECTIONS, MESSAGES)
FILE_SIZE = (HEADER_INTS + len(METERS) * BUCKETS * SLOT_INTS) * 4


@dataclass(frozen=True, slots=True)
class RateCheck:
    allowed: bool
    rate: float  # the estimate before this event was counted


def _hash(key: str) -> tuple[int, int]:
    digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest()
    bucket = int.from_bytes(digest[:4], "little") % BUCKETS
    tag = (int.from_bytes(digest[4:], "little") & 0x7FFFFFFF) or 1  # 0 marks a free slot
    return bucket, tag


def open_rates_file(path: Path) -> int:
    """Open (creating and sizing it if needed) the shared file; returns the descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            header = os.pread(fd, len(MAGIC), 0)
            if header != MAGIC or os.fstat(fd).st_size != FILE_SIZE:
                # New, or written by another layout: start from zero.
                os.ftruncate(fd, 0)
                os.ftruncate(fd, FILE_SIZE)
                os.pwrite(fd, MAGIC, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    return fd


class RateWindows:
    """Rates in a shared file (`path`), or in private memory for a single process."""

    def __init__(self, path: Path | None = None) -> None:
        self._fd: int | None = None
        if path is None:
            self._buffer: mmap.mmap | bytearray = bytearray(FILE_SIZE)
        else:
            self._fd = open_rates_file(path)
            self._buffer = mmap.mmap(self._fd, FILE_SIZE)
        self._ints = memoryview(self._buffer).cast("i")

    def close(self) -> None:
        self._ints.release()
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def hit(
        self, meter: Meter, key: str, limit: int, now: float, *, count_refused: bool
    ) -> RateCheck:
        """Count one event for `key` unless it would exceed `limit` (0: no limit);
        refused events are counted too with `count_refused`."""
        bucket, tag = _hash(key)
        self._lock()
        try:
            slot, window = self._slot(meter, bucket, tag, now, claim=True)
            rate = self._estimate(slot, window, now, meter)
            allowed = limit <= 0 or rate + 1 <= limit
            if allowed or count_refused:
                ints = self._ints
                ints[slot + 2] = min(ints[slot + 2] + 1, INT_MAX)
        finally:
            self._unlock()
        return RateCheck(allowed, rate)

    def peek(self, meter: Meter, key: str, now: float) -> float:
        """The current rate estimate for `key`, counting nothing."""
        bucket, tag = _hash(key)
        self._lock()
        try:
            slot, window = self._slot(meter, bucket, tag, now, claim=False)
            return 0.0 if slot < 0 else self._estimate(slot, window, now, meter)
        finally:
            self._unlock()

    # -- slots ------------------------------------------------------------------------

    def _slot(
        self, meter: Meter, bucket: int, tag: int, now: float, *, claim: bool
    ) -> tuple[int, int]:
        """The slot (index of its first int) holding `tag`, rolled to the current window;
        with `claim`, a free, stale or the quietest slot is taken over when none does."""
        ints = self._ints
        window = int(now // meter.window)
        base = HEADER_INTS + meter.index * BUCKETS * SLOT_INTS
        free = -1
        quietest, quietest_rate = -1, float("inf")
        for way in range(WAYS):
            slot = base + ((bucket + way) % BUCKETS) * SLOT_INTS
            slot_tag = ints[slot]
            if slot_tag == tag:
                self._roll(slot, window)
                return slot, window
            if slot_tag == 0 or ints[slot + 1] < window - 1:
                if free < 0:
                    free = slot
            elif claim:
                self._roll(slot, window)
                rate = self._estimate(slot, window, now, meter)
                if rate < quietest_rate:
                    quietest, quietest_rate = slot, rate
        if not claim:
            return -1, window
        slot = free if free >= 0 else quietest
        ints[slot] = tag
        ints[slot + 1] = window
        ints[slot + 2] = 0
        ints[slot + 3] = 0
        return slot, window

    def _roll(self, slot: int, window: int) -> None:
        ints = self._ints
        seen = ints[slot + 1]
        if seen == window:
            return
        ints[slot + 3] = ints[slot + 2] if seen == window - 1 else 0
        ints[slot + 2] = 0
        ints[slot + 1] = window

    def _estimate(self, slot: int, window: int, now: float, meter: Meter) -> float:
        ints = self._ints
        elapsed = (now - window * meter.window) / meter.window
        return ints[slot + 3] * max(0.0, 1.0 - elapsed) + ints[slot + 2]

    def _lock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
