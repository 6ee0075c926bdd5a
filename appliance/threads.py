"""A bounded thread pool for library code that blocks: pyspf waits on DNS answers,
dkimpy spends CPU on hashing and RSA.

Not the event loop's default executor, which storage and list reloads use: a dead DNS
server can keep every one of these threads waiting, and that must not delay a database
write. Work still queued when its caller gives up (the filter's timeout cancels the
await) is dropped without running.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Enough for the SPF checks of many sessions waiting on slow DNS at once; each thread
# mostly waits, so this is not a CPU budget.
MAX_THREADS = 16

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_owner_pid = 0


def executor() -> ThreadPoolExecutor:
    """The process's pool, created on first use (a forked worker makes its own)."""
    global _executor, _owner_pid
    with _lock:
        if _executor is None or _owner_pid != os.getpid():
            _executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="postwall-blocking")
            _owner_pid = os.getpid()
        return _executor


async def run_blocking(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `func(*args, **kwargs)` in the pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(), functools.partial(func, *args, **kwargs))
