"""One backup or restore at a time per data directory: an fcntl lock file in data_dir/run.

The kernel drops the lock when the process dies, so a crashed run never blocks the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.backup.errors import BackupError
from appliance.rundir import ensure_run_dir, held

LOCK_NAME = "backup.lock"


@contextmanager
def exclusive_run(data_dir: Path, what: str) -> Iterator[None]:
    def refuse(holder: str) -> BackupError:
        return BackupError(f"another backup or restore is running ({holder}); {what} not started")

    with held(ensure_run_dir(data_dir) / LOCK_NAME, what, refuse):
        yield
