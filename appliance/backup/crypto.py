"""Authenticated encryption of a backup file with a key file (AES-256-GCM, in chunks).

Format (all integers big-endian)::

    header  = b"PWBACKUP" | version (1) | chunk size (4) | key id (8) | nonce prefix (7)
    chunk_i = AES-256-GCM(key, nonce = prefix | i (4) | final (1), plaintext_i, aad = header)

Every chunk but the last holds exactly `chunk size` plaintext octets; the last is shorter
(possibly empty) and is the only one encrypted with final = 1. So a modified octet, a
reordered or dropped chunk, a truncated file and a different key all fail authentication
before a single decrypted octet is used. The key id (the first 8 octets of SHA-256 of the
key) lets us say "this backup was made with another key" instead of "corrupted". GCM
nonces never repeat: the prefix is random per file and the counter per chunk.

The key file holds 32 random octets as 64 hex digits; it must be mode 0600 (or stricter)
and owned by the user running the command.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.backup.errors import BackupError

MAGIC = b"PWBACKUP"
VERSION = 1
CHUNK_SIZE = 1 << 20
TAG_SIZE = 16
KEY_SIZE = 32
_HEADER = struct.Struct(">8sBI8s7s")
HEADER_SIZE = _HEADER.size


def keygen(path: Path) -> str:
    """Write a new key file (mode 0600, never overwriting one); return its key id."""
    key = secrets.token_bytes(KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists: refusing to overwrite a key (backups need it)") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot create: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key_id(key).hex()


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:8]


def check_private_file(path: Path, what: str) -> None:
    """Refuse secrets that others can read or that another user controls."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BackupError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BackupError(f"{what} {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        raise BackupError(
            f"{what} {path} is mode {info.st_mode & 0o777:04o}: it holds a secret, so it must "
            f"be readable by its owner only (chmod 600 {path})"
        )
    if info.st_uid != os.geteuid():
        raise BackupError(
            f"{what} {path} is owned by uid {info.st_uid}, not by the user running this "
            f"command (uid {os.geteuid()}): refusing a secret someone else controls"
        )


def load_key(path: Path) -> bytes:
    check_private_file(path, "key file")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise BackupError(
            f"key file {path}: expected {KEY_SIZE * 2} hex digits (made by "
            "`postwall backup keygen`)"
        )
    return key


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def encrypt_file(source: Path, target: Path, key: bytes) -> None:
    aead = AESGCM(key)
    header = _HEADER.pack(MAGIC, VERSION, CHUNK_SIZE, key_id(key), secrets.token_bytes(7))
    prefix = header[-7:]
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(header)
        index = 0
        chunk = src.read(CHUNK_SIZE)
        while True:
            following = src.read(CHUNK_SIZE) if len(chunk) == CHUNK_SIZE else b""
            final = len(chunk) < CHUNK_SIZE
            dst.write(aead.encrypt(_nonce(prefix, index, final), chunk, header))
            if final:
                break
            index += 1
            chunk = following
        dst.flush()
        os.fsync(dst.fileno())


def decrypt_file(source: Path, target: Path, key: bytes) -> None:
    """Decrypt and authenticate all of `source` into `target`; on any failure `target` is
    removed and BackupError says why (wrong key, corrupted, truncated)."""
    try:
        _decrypt(source, target, key)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _decrypt(source: Path, target: Path, key: bytes) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        header = src.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise BackupError(f"{source.name}: not an encrypted postwall backup")
        _, version, chunk_size, file_key_id, prefix = _HEADER.unpack(header)
        if version != VERSION:
            raise BackupError(f"{source.name}: encryption format {version} is not supported")
        if file_key_id != key_id(key):
            raise BackupError(
                f"{source.name}: encrypted with another key (key id {file_key_id.hex()}, "
                f"the key file's is {key_id(key).hex()})"
            )
        if not 0 < chunk_size <= 64 * CHUNK_SIZE:
            raise BackupError(f"{source.name}: corrupted header (chunk size {chunk_size})")
        aead = AESGCM(key)
        index = 0
        while True:
            block = src.read(chunk_size + TAG_SIZE)
            final = len(block) < chunk_size + TAG_SIZE
            if final and len(block) < TAG_SIZE:
                raise BackupError(f"{source.name}: truncated (the final block is missing)")
            try:
                dst.write(aead.decrypt(_nonce(prefix, index, final), block, header))
            except InvalidTag:
                raise BackupError(
                    f"{source.name}: authentication failed at block {index}: the file is "
                    "corrupted or truncated"
                ) from None
            if final:
                break
            index += 1


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)
