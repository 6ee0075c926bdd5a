"""The data directory's `run/` (control sockets, locks, flags, the health token).

Root commands (backup, restore, upgrade) may be the first to need it, before the proxy
ever ran; a root-owned run/ would then keep the service user from creating its sockets.
So a directory made here belongs to the owner of data_dir, as if the service made it.
"""

from __future__ import annotations

import contextlib
import os
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
