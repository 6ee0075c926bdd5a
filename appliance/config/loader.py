"""Load the base YAML file, merge the web UI's overrides on top, and remember where each
value came from."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from appliance.config.schema import Config

OVERRIDES_NAME = "config-overrides.yml"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key path."""


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    base_path: Path | None
    overrides_path: Path | None
    # dotted key path -> "base" | "override"; keys not listed come from the schema default
    provenance: dict[str, str] = field(default_factory=dict)

    def source_of(self, dotted: str) -> str:
        return self.provenance.get(dotted, "default")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings recursively; lists and scalars in `top` replace those in `base`."""
    merged: dict[str, Any] = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def leaf_paths(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            paths.extend(leaf_paths(value, dotted + "."))
        else:
            paths.append(dotted)
    return paths


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def validate(data: Mapping[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from exc


def overrides_path_for(config: Config) -> Path:
    return config.data_dir / OVERRIDES_NAME


def load(base_path: Path | None, overrides_path: Path | None = None) -> LoadedConfig:
    """Load `base_path` (None: schema defaults) and the overrides file beside the state.

    The overrides file is `data_dir/config-overrides.yml` unless given; a missing one is
    normal (nothing was changed in the UI)."""
    base = read_yaml(base_path) if base_path else {}
    base_config = validate(base, str(base_path or "defaults"))
    if overrides_path is None:
        overrides_path = overrides_path_for(base_config)
    overrides = read_yaml(overrides_path) if overrides_path.exists() else {}
    if "data_dir" in overrides:
        raise ConfigError(f"{overrides_path}: data_dir can only be set in the base file")
    merged = deep_merge(base, overrides)
    config = validate(merged, f"{base_path or 'defaults'} + {overrides_path}")
    provenance = {path: "base" for path in leaf_paths(base)}
    provenance.update({path: "override" for path in leaf_paths(overrides)})
    return LoadedConfig(config, base_path, overrides_path, provenance)


def write_overrides(
    path: Path, overrides: Mapping[str, Any], *, base: Mapping[str, Any] | None = None
) -> None:
    """Write the overrides file atomically (temporary file, fsync, rename), mode 0640.

    With `base` (the base file's document) the merged result is validated, as `load` will
    see it; without, the overrides alone must be valid (cross-field rules such as the
    threshold order then see schema defaults in place of the base file's values)."""
    if "data_dir" in overrides:
        raise ConfigError(f"{path}: data_dir can only be set in the base file")
    if base is None:
        validate(overrides, str(path))  # a partial document must still be well-typed
    else:
        validate(deep_merge(base, overrides), f"base + {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(overrides), sort_keys=True, default_flow_style=False)
    fd, tmp = tempfile.mkstemp(prefix=".overrides-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
