"""Backup file names and the tarball: packing a staged tree, unpacking it safely.

Names are ``postwall-<host>-<UTC YYYYmmddTHHMMSSZ>.tar.gz`` (``.tar.gz.enc`` when
encrypted), so a plain listing sorts them by time and retention can read their dates.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.backup.errors import BackupError
from appliance.backup.manifest import MANIFEST_NAME, Manifest, validate_archive_path

TIME_FORMAT = "%Y%m%dT%H%M%SZ"
PLAIN_SUFFIX = ".tar.gz"
ENCRYPTED_SUFFIX = ".tar.gz.enc"
_NAME_RE = re.compile(
    r"postwall-(?P<host>[A-Za-z0-9._-]+)-(?P<when>\d{8}T\d{6}Z)(?P<suffix>\.tar\.gz(?:\.enc)?)"
)
_HOST_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, order=True)
class BackupName:
    when: datetime
    host: str
    encrypted: bool

    @property
    def name(self) -> str:
        suffix = ENCRYPTED_SUFFIX if self.encrypted else PLAIN_SUFFIX
        return f"postwall-{self.host}-{self.when.strftime(TIME_FORMAT)}{suffix}"


def safe_host(host: str) -> str:
    return _HOST_RE.sub("-", host).strip("-.") or "appliance"


def make_name(host: str, when: datetime, *, encrypted: bool) -> BackupName:
    return BackupName(when.astimezone(UTC).replace(microsecond=0), safe_host(host), encrypted)


def parse_name(name: str) -> BackupName | None:
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    try:
        when = datetime.strptime(match["when"], TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return BackupName(when, match["host"], match["suffix"] == ENCRYPTED_SUFFIX)


def pack(staging: Path, manifest: Manifest, target: Path) -> None:
    """Write the manifest first (a reader can stop after it), then every listed file."""
    manifest_path = staging / MANIFEST_NAME
    manifest_path.write_bytes(manifest.to_json())
    with tarfile.open(target, "w:gz", compresslevel=6) as tar:
        tar.add(manifest_path, arcname=MANIFEST_NAME, recursive=False, filter=_normalise)
        for entry in manifest.files:
            tar.add(staging / entry.path, arcname=entry.path, recursive=False, filter=_normalise)


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owners come back from the restore's own rules, not from the archive.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def unpack(archive: Path, target: Path) -> Manifest:
    """Extract the manifest and the files it lists into `target`; anything else in the
    tarball (links, devices, unlisted or unsafe paths) is an error, not a surprise."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            if not names or names[0] != MANIFEST_NAME:
                raise BackupError(
                    f"{archive.name}: no manifest at the start: not a postwall backup"
                )
            manifest_member = tar.extractfile(members[0])
            assert manifest_member is not None
            manifest = Manifest.from_json(manifest_member.read())
            listed = {f.path for f in manifest.files}
            for member in members[1:]:
                if not member.isfile():
                    raise BackupError(f"{archive.name}: {member.name!r} is not a regular file")
                validate_archive_path(member.name)
                if member.name not in listed:
                    raise BackupError(f"{archive.name}: {member.name!r} is not in the manifest")
            missing = listed - set(names[1:])
            if missing:
                raise BackupError(
                    f"{archive.name} is truncated or corrupted: {len(missing)} file(s) of "
                    f"the manifest are missing, e.g. {sorted(missing)[0]}"
                )
            # Every member was checked above (regular file, safe listed path), so the
            # "data" filter is a second line of defence: Debian 12's Python 3.11.2 predates
            # extraction filters (3.11.4), and the appliance runs on it.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members[1:], filter="data")
            else:
                tar.extractall(target, members=members[1:])  # noqa: S202
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BackupError(
            f"{archive.name}: cannot read the tarball ({exc}): corrupted or truncated"
        ) from exc
    return manifest
