"""The data directory's `run/` (control sockets, locks, flags, the health token).

Root commands (backup, restore, upgrade) may be the first to need it, before the proxy
ever ran; a root-owned run/ would then keep the service user from creating its sockets.
So a directory made here belongs to the owner of data_dir, as if the service made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_DIRNAME = "run"


def ensure_run_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir)
    run_dir = data_dir / RUN_DIRNAME
    if run_dir.is_dir():
        return run_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        run_dir.mkdir(mode=0o700)
        owner = data_dir.stat()
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            os.chown(run_dir, owner.st_uid, owner.st_gid)
        os.chmod(run_dir, 0o700)  # mkdir's mode is filtered by the umask
    return run_dir


@contextmanager
def held(path: Path, what: str, refuse: Callable[[str], Exception]) -> Iterator[None]:
    """An fcntl lock on `path` for one run of `what`, or `refuse(holder)` raised at once
    when another process holds it. The kernel drops the lock when the process dies, so a
    crashed run never blocks the next; the file names the holder for that message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
