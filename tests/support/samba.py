"""A real Samba server for the backup tests, run as a plain process (see TESTING.md).

`SambaServer` runs ``smbd --foreground`` with its own ``smb.conf`` and private, lock,
state, cache and pid directories under a throwaway directory, listening on a free
loopback port (smbprotocol connects to any port). It exports one share whose name has a
space, ``Appliance Backups``, as a real Windows share would, writable only by one test
user (created with ``useradd`` once, given a fresh random Samba password per run with
``smbpasswd -s -a``). It is stopped by its PID.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.support.services import _REAPER as REAPER
from tests.support.services import (
    LOOPBACK,
    SAFE_ENV,
    LocalDaemon,
    ServiceError,
    _make_base_dir,
    _read_text,
    _register,
    _tail,
    free_port,
    port_in_use,
    wait_until,
)

SMBD_BIN = Path("/usr/sbin/smbd")
SMBPASSWD_BIN = Path("/usr/bin/smbpasswd")
USERADD_BIN = Path("/usr/sbin/useradd")
SHARE_NAME = "Appliance Backups"
TEST_USER = "pwbackup"


def samba_unavailable_reason() -> str | None:
    for binary in (SMBD_BIN, SMBPASSWD_BIN, USERADD_BIN):
        if not binary.exists():
            return f"{binary} is missing: run scripts/install-test-deps (package samba)"
    if os.geteuid() != 0:
        return "the Samba tests need root (useradd, smbd serving files as the test user)"
    return None


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The Unix account Samba maps the test user to (no home, no login shell)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        [str(USERADD_BIN), "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         name],
        capture_output=True, text=True, env=SAFE_ENV, check=False,
    )
    # Another test run may have created it in the meantime.
    if result.returncode not in (0, 9):
        raise ServiceError(f"useradd {name} failed: {result.stderr.strip()}")
    return pwd.getpwnam(name)


class SambaServer(LocalDaemon):
    """smbd on ``127.0.0.1:port`` with the share ``Appliance Backups`` (``share_dir``)."""

    def __init__(self, *, user: str = TEST_USER, base_dir: Path | None = None) -> None:
        self._own_base = base_dir is None
        self.base_dir = _make_base_dir("postwall-samba-") if base_dir is None else base_dir
        self.config_path = self.base_dir / "smb.conf"
        self.share_dir = self.base_dir / "share"
        self.log_path = self.base_dir / "log.smbd"
        self.output_path = self.base_dir / "output.log"
        self.share = SHARE_NAME
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.host = LOOPBACK
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- configuration -----------------------------------------------------------------

    def configure(self) -> None:
        account = ensure_system_user(self.user)
        for name in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (self.base_dir / name).mkdir(mode=0o755, exist_ok=True)
        self.share_dir.mkdir(exist_ok=True)
        os.chown(self.share_dir, account.pw_uid, account.pw_gid)
        self.share_dir.chmod(0o750)
        d = self.base_dir
        self.config_path.write_text(
            "# Written by tests/support/samba.py for one test run.\n"
            "[global]\n"
            "  server role = standalone server\n"
            f"  interfaces = {LOOPBACK}\n"
            "  bind interfaces only = yes\n"
            f"  smb ports = {self.port}\n"
            "  disable netbios = yes\n"
            "  server min protocol = SMB2_10\n"
            f"  private dir = {d / 'private'}\n"
            f"  lock directory = {d / 'lock'}\n"
            f"  state directory = {d / 'state'}\n"
            f"  cache directory = {d / 'cache'}\n"
            f"  pid directory = {d / 'pid'}\n"
            f"  ncalrpc dir = {d / 'ncalrpc'}\n"
            f"  log file = {self.log_path}\n"
            "  log level = 1\n"
            "  passdb backend = tdbsam\n"
            "  load printers = no\n"
            "  printing = bsd\n"
            "  printcap name = /dev/null\n"
            "  disable spoolss = yes\n"
            "  map to guest = never\n"
            "\n"
            f"[{SHARE_NAME}]\n"
            f"  path = {self.share_dir}\n"
            f"  valid users = {self.user}\n"
            "  read only = no\n"
            "  browseable = yes\n"
        )
        result = subprocess.run(
            [str(SMBPASSWD_BIN), "-c", str(self.config_path), "-s", "-a", self.user],
            input=f"{self.password}\n{self.password}\n", capture_output=True, text=True,
            env=SAFE_ENV, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"smbpasswd -a {self.user} failed: {result.stderr.strip()}")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SambaServer:
        if self.is_running:
            return self
        reason = samba_unavailable_reason()
        if reason:
            raise ServiceError(reason)
        self.configure()
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(SMBD_BIN), "--foreground", "--no-process-group", "--debug-stdout",
                 "-s", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=SAFE_ENV, start_new_session=True,
            )
        proc = self._proc
        REAPER.watch(proc.pid, group=True)
        _register(self)
        ready = wait_until(
            lambda: proc.poll() is not None or port_in_use(self.host, self.port), timeout
        )
        if not ready or proc.poll() is not None:
            self.stop()
            raise ServiceError(f"smbd did not start within {timeout:g}s:\n{self.diagnostics()}")
        return self

    # -- helpers for tests -------------------------------------------------------------

    def credentials_text(self, password: str | None = None, domain: str | None = None) -> str:
        """A credentials file in the smbclient/mount.cifs format."""
        text = f"username={self.user}\npassword={self.password if password is None else password}\n"
        if domain:
            text += f"domain={domain}\n"
        return text

    def make_folder(self, relative: str) -> Path:
        """A sub-folder of the share, owned by the test user (as on the server's disk)."""
        account = pwd.getpwnam(self.user)
        path = self.share_dir
        for part in Path(relative).parts:
            path = path / part
            path.mkdir(exist_ok=True)
            os.chown(path, account.pw_uid, account.pw_gid)
        return path

    def give(self, path: Path) -> None:
        """Make a file put on the share's disk by a test belong to the share's user, as
        if it had been uploaded (Samba refuses to delete a file its user cannot write)."""
        account = pwd.getpwnam(self.user)
        os.chown(path, account.pw_uid, account.pw_gid)

    def clear(self) -> None:
        """Empty the share (between tests)."""
        for entry in self.share_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def diagnostics(self) -> str:
        code = self._proc.poll() if self._proc else None
        status = f"exit code {code}" if code is not None else "still running"
        return (f"{status}; output:\n{_tail(_read_text(self.output_path), 30)}\n"
                f"log:\n{_tail(_read_text(self.log_path), 30)}")
