"""`BackgroundWriter`: a bounded queue drained by a daemon thread in batches.

The proxy's event loop must never wait for the database: `submit` only appends to a
deque under a lock. The thread writes a batch when it is full or `flush_interval` after
its first item. A database error (locked, disk full, gone) keeps the batch and retries
with exponential backoff; an item the database refuses as such (a bug, not an outage) is
isolated, logged with its key and counted in `failed`. A full queue refuses new items
with a (rate-limited) warning and counts them in `dropped`. Nothing is lost silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Generic, Self, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_QUEUE = 100_000
DEFAULT_BATCH_SIZE = 500
DEFAULT_FLUSH_INTERVAL = 0.2
DEFAULT_MAX_BACKOFF = 30.0
_FIRST_BACKOFF = 0.05
_DROP_WARNING_INTERVAL = 10.0


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database is busy, full, unreachable or restarting."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class BackgroundWriter(Generic[T]):
    def __init__(
        self,
        write_batch: Callable[[Sequence[T]], object],
        *,
        name: str = "storage-writer",
        describe: Callable[[T], str] = repr,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval < 0 or max_backoff <= 0:
            raise ValueError("max_queue, batch_size must be >= 1; intervals positive")
        self._write_batch = write_batch
        self._describe = describe
        self.name = name
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff

        self.dropped = 0  # refused by submit because the queue was full
        self.failed = 0  # refused by the database as invalid (logged one by one)
        self.written = 0

        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the thread waits here
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._accepted = 0
        self._finished = 0  # written or failed
        self._flush_requested = False
        self._stopping = False
        self._abandon = threading.Event()
        self._last_drop_warning = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Queue `item` without blocking on the database; False if it was dropped."""
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"{self.name} is closed")
            if len(self._items) >= self.max_queue:
                self.dropped += 1
                dropped = self.dropped
                now = time.monotonic()
                warn = now - self._last_drop_warning >= _DROP_WARNING_INTERVAL
                if warn:
                    self._last_drop_warning = now
            else:
                self._items.append(item)
                self._accepted += 1
                size = len(self._items)
                if size == 1 or size >= self.batch_size:
                    self._wake.notify()
                return True
        if warn:
            log.warning(
                "%s: queue full (%d waiting), dropped %s; %d dropped so far",
                self.name,
                self.max_queue,
                self._describe(item),
                dropped,
            )
        return False

    @property
    def pending(self) -> int:
        """Items accepted but not yet written (or failed)."""
        with self._lock:
            return self._accepted - self._finished

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is written; False on timeout."""
        with self._lock:
            target = self._accepted
            if self._finished >= target:
                return True
            self._flush_requested = True
            self._wake.notify()
            return self._done.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is queued and stop the thread. If the database stays unavailable
        past `timeout`, log how many items were not written and return False."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            log.error(
                "%s: database unavailable, %d queued items not written at close",
                self.name,
                self.pending,
            )
            return False
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._write_with_retry(batch)
            except Exception:  # never let the thread die with items queued
                log.exception("%s: unexpected error; %d items lost", self.name, len(batch))
                self.failed += len(batch)
            with self._lock:
                self._finished += len(batch)
                self._done.notify_all()
            if self._abandon.is_set():
                return

    def _next_batch(self) -> list[T] | None:
        with self._lock:
            while not self._items and not self._stopping:
                self._wake.wait()
            if not self._items:
                return None
            deadline = time.monotonic() + self.flush_interval
            while (
                len(self._items) < self.batch_size
                and not self._flush_requested
                and not self._stopping
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            count = min(self.batch_size, len(self._items))
            batch = [self._items.popleft() for _ in range(count)]
            if not self._items:
                self._flush_requested = False
            return batch

    def _write_with_retry(self, batch: list[T]) -> None:
        backoff = _FIRST_BACKOFF
        attempt = 0
        while batch:
            try:
                self._write_batch(batch)
            except Exception as exc:
                if not is_transient(exc):
                    batch, transient = self._write_one_by_one(batch)
                    if transient is None:
                        return
                    exc = transient
                attempt += 1
                log_at = logging.ERROR if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
                log.log(
                    log_at,
                    "%s: cannot write %d items (attempt %d), retrying in %.2fs: %s",
                    self.name,
                    len(batch),
                    attempt,
                    backoff,
                    exc,
                )
                if self._abandon.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff)
            else:
                self.written += len(batch)
                if attempt:
                    log.warning("%s: written after %d retries", self.name, attempt)
                return

    def _write_one_by_one(self, batch: list[T]) -> tuple[list[T], Exception | None]:
        """Isolate invalid items; return what is left when a transient error interrupts,
        with that error."""
        for index, item in enumerate(batch):
            try:
                self._write_batch([item])
            except Exception as exc:
                if is_transient(exc):
                    return batch[index:], exc
                self.failed += 1
                log.exception("%s: database refused %s", self.name, self._describe(item))
            else:
                self.written += 1
        return [], None
