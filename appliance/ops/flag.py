"""The maintenance flag: `data_dir/run/maintenance`, raised by the maintenance window for
as long as it is open, so that a proxy worker that (re)starts meanwhile comes up in
maintenance too (421/451) instead of accepting mail the window is about to cut off.

The control socket tells the workers that run when the window opens; the flag covers the
ones started later: a worker the supervisor restarts after a crash, or a proxy that
systemd restarts, while the window drains or holds the ports.

The file names the process holding the window (pid and start time, the way
appliance/ops/services.py names a process). A flag whose process is gone (the upgrade
was killed) is stale and ignored: a forgotten flag must never keep the appliance
refusing mail for ever.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from appliance.rundir import ensure_run_dir

FLAG_NAME = "maintenance"


def flag_path(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / FLAG_NAME


def _start_time(pid: int) -> str | None:
    # The same check as appliance/ops/services.py, kept here so that a serving worker
    # imports nothing from the upgrade's modules.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


def raise_flag(data_dir: Path, reason: str) -> None:
    path = flag_path(data_dir)
    ensure_run_dir(data_dir)
    pid = os.getpid()
    tmp = path.with_name(f".{FLAG_NAME}.{pid}")
    # Readable by the service user (the window runs as root, the proxy does not).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{pid} {_start_time(pid)} {reason}\n")
    os.chmod(tmp, 0o644)  # whatever the umask
    os.replace(tmp, path)


def lower_flag(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        flag_path(data_dir).unlink()


def active_flag(data_dir: Path) -> str | None:
    """The reason of the window that holds the flag, or None (no flag, or a stale one)."""
    try:
        pid_text, started, reason = flag_path(data_dir).read_text().split(maxsplit=2)
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid <= 0 or started == "None" or _start_time(pid) != started:
        return None
    return reason.strip() or "maintenance"
