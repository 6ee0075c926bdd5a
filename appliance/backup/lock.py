"""One backup or restore at a time per data directory: an fcntl lock file in data_dir/run.

The kernel drops the lock when the process dies, so a crashed run never blocks the next.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.backup.errors import BackupError
from appliance.rundir import ensure_run_dir

LOCK_NAME = "backup.lock"


@contextmanager
def exclusive_run(data_dir: Path, what: str) -> Iterator[None]:
    run_dir = ensure_run_dir(data_dir)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise BackupError(
                f"another backup or restore is running ({holder}); {what} not started"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
