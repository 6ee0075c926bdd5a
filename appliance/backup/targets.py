"""Where backups go: a local directory and an SMB share (smbprotocol's smbclient).

Both upload under a temporary name, read the file back and compare its SHA-256 with
the local file's, and only then rename it to its backup name: a file with a backup name
on a target is always complete and verified, and retention and `--latest` only ever see
those. A failed upload removes its temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.backup.archive import BackupName, parse_name
from appliance.backup.crypto import check_private_file
from appliance.backup.errors import BackupError
from appliance.backup.manifest import sha256_file
from appliance.config.schema import BackupSettings, BackupSMBSettings

PARTIAL_PREFIX = ".partial-"
COPY_CHUNK = 1 << 20
SMB_TIMEOUT = 15


class Target(ABC):
    label: str

    @abstractmethod
    def check(self) -> None:
        """Raise BackupError when the target cannot be used (before any work is done)."""

    @abstractmethod
    def names(self) -> list[str]:
        """File names in the target's folder."""

    @abstractmethod
    def open_read(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    @abstractmethod
    def open_write(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    @abstractmethod
    def rename(self, old: str, new: str) -> None: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def backups(self, host: str | None = None) -> list[BackupName]:
        """This target's backups (of `host` if given), oldest first."""
        found = [b for b in (parse_name(n) for n in self.names()) if b is not None]
        return sorted(b for b in found if host is None or b.host == host)

    def sizes(self) -> dict[str, int]:
        """Size in bytes of each file in the target's folder (one listing)."""
        return {}

    def remote_sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.open_read(name) as handle:
            while chunk := handle.read(COPY_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def upload(self, local: Path, name: str) -> str:
        """Copy, read back, compare, rename. Returns the verified SHA-256."""
        expected = sha256_file(local)
        partial = PARTIAL_PREFIX + name
        try:
            self.write(local, partial)
            actual = self.remote_sha256(partial)
            if actual != expected:
                raise BackupError(
                    f"{self.label}: the uploaded copy of {name} reads back with SHA-256 "
                    f"{actual[:16]}..., the local file has {expected[:16]}...: the upload "
                    "is corrupt and does not count"
                )
            self.rename(partial, name)
        except BackupError:
            with contextlib.suppress(Exception):
                self.delete(partial)
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.delete(partial)
            raise BackupError(f"{self.label}: upload of {name} failed: {exc}") from exc
        except BaseException:
            with contextlib.suppress(Exception):
                self.delete(partial)
            raise
        return expected

    def write(self, local: Path, name: str) -> None:
        with local.open("rb") as src, self.open_write(name) as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)

    def download(self, name: str, local: Path) -> None:
        with self.open_read(name) as src, local.open("wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)


class LocalTarget(Target):
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.label = f"directory {self.directory}"

    def check(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise BackupError(f"{self.label}: cannot create: {exc.strerror}") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise BackupError(f"{self.label}: not writable by this user")

    def names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackupError(f"{self.label}: cannot list: {exc.strerror}") from exc

    def sizes(self) -> dict[str, int]:
        try:
            with os.scandir(self.directory) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BackupError(f"{self.label}: cannot list: {exc.strerror}") from exc

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        try:
            handle = (self.directory / name).open("rb")
        except FileNotFoundError:
            raise BackupError(f"{self.label}: no backup named {name}") from None
        with handle:
            yield handle

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())

    def rename(self, old: str, new: str) -> None:
        os.replace(self.directory / old, self.directory / new)

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class SMBCredentials:
    username: str
    password: str
    domain: str = ""

    @property
    def login(self) -> str:
        return f"{self.domain}\\{self.username}" if self.domain else self.username


def read_credentials(path: Path) -> SMBCredentials:
    """The smbclient -A / mount.cifs format: ``username=``, ``password=``, ``domain=``."""
    check_private_file(path, "credentials file")
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("username", "user", "password", "pass", "domain", "workgroup"):
            raise BackupError(f"credentials file {path}, line {number}: expected username=, "
                              "password= or domain=")
        values[{"user": "username", "pass": "password", "workgroup": "domain"}.get(key, key)] = (
            value.strip()
        )
    if not values.get("username") or "password" not in values:
        raise BackupError(f"credentials file {path}: needs a username= and a password= line")
    return SMBCredentials(values["username"], values["password"], values.get("domain", ""))


class SMBTarget(Target):
    def __init__(self, settings: BackupSMBSettings) -> None:
        self.settings = settings
        self.server = settings.server
        self.port = settings.port
        self.share = settings.share
        self.folder = settings.folder
        where = f"\\\\{self.server}\\{self.share}"
        if self.folder:
            where += "\\" + self.folder.replace("/", "\\")
        self.label = f"SMB share {where} (port {self.port})"
        self._unc = where
        self._credentials: SMBCredentials | None = None

    def path(self, name: str = "") -> str:
        return f"{self._unc}\\{name}" if name else self._unc

    def _call(self, action: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from smbprotocol.exceptions import LogonFailure, SMBException, SMBOSError

        self._connect()
        try:
            return func(*args, port=self.port, **kwargs)
        except LogonFailure:
            raise self._logon_error() from None
        except SMBOSError as exc:
            raise BackupError(f"{self.label}: {action} failed: {exc.strerror}") from exc
        except (SMBException, OSError, ValueError) as exc:
            raise BackupError(f"{self.label}: {action} failed: {exc}") from exc

    def _logon_error(self, login: str | None = None) -> BackupError:
        login = login or (self._credentials.login if self._credentials else "?")
        return BackupError(
            f"{self.label}: logon as {login!r} refused: wrong user name or password in "
            f"{self.settings.credentials_file}"
        )

    def _connect(self) -> None:
        if self._credentials is not None:
            return
        import smbclient
        from smbprotocol.exceptions import LogonFailure, SMBException

        credentials = read_credentials(self.settings.credentials_file)
        self._credentials = credentials
        try:
            smbclient.register_session(
                self.server, username=credentials.login, password=credentials.password,
                port=self.port, connection_timeout=SMB_TIMEOUT,
            )
        except LogonFailure:
            self._credentials = None
            raise self._logon_error(credentials.login) from None
        except (SMBException, OSError, ValueError) as exc:
            self._credentials = None
            raise BackupError(
                f"{self.label}: cannot connect to {self.server}:{self.port}: {exc}"
            ) from exc

    def check(self) -> None:
        import smbclient
        from smbprotocol.exceptions import LogonFailure, SMBException, SMBOSError

        self._connect()
        share_root = f"\\\\{self.server}\\{self.share}"
        try:
            smbclient.listdir(share_root, port=self.port)
        except LogonFailure:
            raise self._logon_error() from None
        except (SMBOSError, SMBException) as exc:
            raise BackupError(
                f"{self.label}: the share {self.share!r} does not exist on {self.server} or "
                f"{self._credentials.login if self._credentials else 'this user'!r} may not "
                f"use it ({exc})"
            ) from exc
        if self.folder:
            try:
                info = smbclient.stat(self._unc, port=self.port)
            except (SMBOSError, SMBException) as exc:
                raise BackupError(
                    f"{self.label}: the folder {self.folder!r} does not exist on the share "
                    f"{self.share!r}; create it on the file server (it is never created "
                    "automatically, so a typo cannot scatter backups)"
                ) from exc
            import stat as stat_module

            if not stat_module.S_ISDIR(info.st_mode):
                raise BackupError(f"{self.label}: {self.folder!r} is not a folder")

    def names(self) -> list[str]:
        import smbclient

        return sorted(self._call("listing", smbclient.listdir, self.path()))

    def sizes(self) -> dict[str, int]:
        import smbclient

        # The directory query already carries each file's size: no stat per file.
        entries = self._call("listing", lambda path, **kw: list(smbclient.scandir(path, **kw)),
                             self.path())
        return {e.name: int(e.smb_info.end_of_file) for e in entries if not e.is_dir()}

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        import smbclient

        handle = self._call(f"reading {name}", smbclient.open_file, self.path(name), mode="rb")
        with handle:
            yield handle

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        import smbclient

        handle = self._call(f"writing {name}", smbclient.open_file, self.path(name), mode="wb")
        with handle:
            yield handle

    def rename(self, old: str, new: str) -> None:
        import smbclient

        self._call(f"renaming {old}", smbclient.rename, self.path(old), self.path(new))

    def delete(self, name: str) -> None:
        import smbclient

        self._call(f"deleting {name}", smbclient.remove, self.path(name))


def configured_targets(settings: BackupSettings) -> list[Target]:
    targets: list[Target] = []
    if settings.directory is not None:
        targets.append(LocalTarget(settings.directory))
    if settings.smb is not None:
        targets.append(SMBTarget(settings.smb))
    return targets
