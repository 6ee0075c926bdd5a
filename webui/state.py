"""What the web UI process holds: the base configuration path, the storage handle and the
effective configuration, re-read whenever the base or overrides file changes on disk."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from appliance.config import loader
from appliance.config.loader import LoadedConfig
from appliance.control import ControlClient
from appliance.storage.facade import Storage

WEBUI_DIRNAME = "webui"
SECRET_KEY_NAME = "secret_key"  # noqa: S105 - a file name
EXTENSION = "postwall"


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class UIState:
    base_path: Path | None
    storage: Storage
    _loaded: LoadedConfig
    _stamps: tuple[object, ...]
    _lock: threading.Lock
    # Why the files on disk could not be loaded (someone broke the base file by hand);
    # the last valid configuration stays in use meanwhile.
    load_error: str | None = None

    @classmethod
    def open(cls, base_path: Path | None, storage: Storage | None = None) -> UIState:
        loaded = loader.load(base_path)
        if storage is None:
            storage = Storage.open(loaded.config.data_dir)
        return cls(base_path, storage, loaded, cls._stamps_of(base_path, loaded),
                   threading.Lock())

    @staticmethod
    def _stamps_of(base_path: Path | None, loaded: LoadedConfig) -> tuple[object, ...]:
        return (_stamp(base_path), _stamp(loaded.overrides_path))

    @property
    def loaded(self) -> LoadedConfig:
        """The effective configuration; re-read when a file changed (e.g. another admin
        applied a change, or the playbook rewrote the base file)."""
        with self._lock:
            stamps = self._stamps_of(self.base_path, self._loaded)
            if stamps != self._stamps:
                try:
                    loaded = loader.load(self.base_path)
                except loader.ConfigError as exc:
                    self.load_error = str(exc)
                    self._stamps = stamps  # try again when the files change once more
                    return self._loaded
                self.load_error = None
                self._loaded = loaded
                self._stamps = self._stamps_of(self.base_path, loaded)
            return self._loaded

    def forget(self) -> None:
        """Drop the cached configuration (after writing the overrides file)."""
        with self._lock:
            self._stamps = ()

    @property
    def data_dir(self) -> Path:
        return self._loaded.config.data_dir

    @property
    def overrides_path(self) -> Path:
        path = self._loaded.overrides_path
        assert path is not None
        return path

    def control(self) -> ControlClient:
        return ControlClient(self.data_dir)


def state() -> UIState:
    ui: UIState = current_app.extensions[EXTENSION]
    return ui


def load_or_create_secret(data_dir: Path) -> bytes:
    """The key that signs session cookies, made once per appliance (mode 0600).

    Random per installation, never a built-in default; deleting the file ends every
    session at the next start."""
    directory = Path(data_dir) / WEBUI_DIRNAME
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SECRET_KEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < 32:
            raise RuntimeError(
                f"{path}: too short to be a session key; delete it to renew"
            ) from None
        return secret
    secret = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret
