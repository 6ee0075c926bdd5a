"""DKIM signing keys made on the appliance: one directory per domain under
<data_dir>/dkim/<domain>/, one owner-only file per selector (<selector>.key), and a file
`active` naming the selector that signs. Rotation adds a selector and makes it active;
the old key stays (and is still shown for DNS) until it is removed, so mail signed with
it keeps verifying while it is in transit.

RSA keys are PKCS#1 PEM (what dkimpy reads); ed25519 keys (RFC 8463) are the base64 of
the 32-byte seed. Used by the signer (appliance/dkim_signing.py), `postwall dkim ...`
and the web UI (`dns_records`)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Algorithm = Literal["rsa", "ed25519"]
SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DOMAIN_LABEL_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*"
                             r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
RSA_PEM_HEADER = b"-----BEGIN RSA PRIVATE KEY-----"
ACTIVE_FILE = "active"
TXT_STRING_MAX = 255  # octets per character-string in a TXT record (RFC 1035 3.3)


class DKIMKeyError(Exception):
    """A key that cannot be made, found or read; the text says which and why."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes  # as dkimpy takes it: PEM for RSA, base64 seed for ed25519
    path: Path

    @property
    def signature_algorithm(self) -> bytes:
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"


@dataclass(frozen=True, slots=True)
class DKIMRecord:
    """The TXT record to publish for one selector."""

    domain: str
    selector: str
    algorithm: Algorithm
    active: bool
    value: str  # v=DKIM1; k=...; p=...
    created: datetime
    path: Path

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def strings(self) -> list[str]:
        """`value` split into character-strings of at most 255 octets."""
        return [self.value[i:i + TXT_STRING_MAX]
                for i in range(0, len(self.value), TXT_STRING_MAX)]

    def zone_line(self) -> str:
        quoted = " ".join(f'"{part}"' for part in self.strings)
        return f"{self.name}. IN TXT ( {quoted} )"


def normalize_domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    if not DOMAIN_LABEL_RE.match(name):
        raise DKIMKeyError(f"invalid domain name {domain!r}")
    return name


def check_selector(selector: str) -> str:
    name = selector.strip().lower()
    if not SELECTOR_RE.match(name) or name == ACTIVE_FILE:
        raise DKIMKeyError(
            f"invalid selector {selector!r}: letters, digits and inner hyphens, 1-63 characters"
        )
    return name


def domain_dir(data_dir: Path, domain: str) -> Path:
    return data_dir / "dkim" / normalize_domain(domain)


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    return domain_dir(data_dir, domain) / f"{check_selector(selector)}.key"


# -- making keys -----------------------------------------------------------------------


def _new_private(algorithm: Algorithm, bits: int) -> bytes:
    if algorithm == "ed25519":
        import nacl.signing

        seed = bytes(nacl.signing.SigningKey.generate())
        return base64.b64encode(seed) + b"\n"
    if bits not in (1024, 2048, 3072, 4096):
        raise DKIMKeyError("RSA keys have 1024, 2048, 3072 or 4096 bits (2048 recommended)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _owner_of_data_dir(path: Path) -> tuple[int, int] | None:
    """(uid, gid) of the data directory above <data_dir>/dkim/<domain>/..., when we run as
    root (an administrator's `postwall dkim ...`): what we make must belong to the
    service's user, or the proxy could not read its own keys."""
    if os.geteuid() != 0:
        return None
    for parent in path.parents:
        if parent.name == "dkim":
            info = parent.parent.stat()
            return info.st_uid, info.st_gid
    return None


def _hand_over(path: Path) -> None:
    owner = _owner_of_data_dir(path)
    if owner is None:
        return
    for item in (path.parent.parent, path.parent, path):
        if item.exists():
            os.chown(item, *owner, follow_symlinks=False)


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` owner-only with `data`; refuse to replace an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise DKIMKeyError(f"key {path} exists already; choose another selector") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _hand_over(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_active(directory: Path, selector: str) -> None:
    temp = directory / f".{ACTIVE_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(selector + "\n")
    _hand_over(temp)
    os.replace(temp, directory / ACTIVE_FILE)


def default_selector(data_dir: Path, domain: str) -> str:
    """pwYYYYMMDD, with a letter added when that one exists already."""
    base = "pw" + time.strftime("%Y%m%d", time.gmtime())
    directory = domain_dir(data_dir, domain)
    for suffix in ["", *"abcdefghijklmnopqrstuvwxyz"]:
        if not (directory / f"{base}{suffix}.key").exists():
            return base + suffix
    raise DKIMKeyError(f"too many keys made today for {domain}; give --selector")


def generate(
    data_dir: Path, domain: str, selector: str | None = None, *,
    algorithm: Algorithm = "rsa", bits: int = 2048, activate: bool | None = None,
) -> DKIMRecord:
    """Make a key for `domain`. It becomes the active one when `activate` says so, or
    (None) when the domain has no active key yet."""
    domain = normalize_domain(domain)
    selector = check_selector(selector) if selector else default_selector(data_dir, domain)
    path = key_path(data_dir, domain, selector)
    _write_new(path, _new_private(algorithm, bits))
    if activate or (activate is None and active_selector(data_dir, domain) is None):
        _write_active(path.parent, selector)
    return record_for(data_dir, domain, selector)


def rotate(data_dir: Path, domain: str, selector: str | None = None, *,
           algorithm: Algorithm = "rsa", bits: int = 2048) -> DKIMRecord:
    """A new selector that signs from now on; the old one stays published until removed."""
    return generate(data_dir, domain, selector, algorithm=algorithm, bits=bits, activate=True)


def activate(data_dir: Path, domain: str, selector: str) -> None:
    path = key_path(data_dir, domain, selector)
    if not path.is_file():
        raise DKIMKeyError(f"no key {path}")
    _write_active(path.parent, check_selector(selector))


def remove(data_dir: Path, domain: str, selector: str) -> Path:
    """Delete a selector's key; the active one cannot be removed (rotate first)."""
    path = key_path(data_dir, domain, selector)
    if active_selector(data_dir, domain) == check_selector(selector):
        raise DKIMKeyError(f"{selector} is the active selector of {domain}: rotate first")
    if not path.is_file():
        raise DKIMKeyError(f"no key {path}")
    path.unlink()
    return path


# -- reading keys ----------------------------------------------------------------------


def active_selector(data_dir: Path, domain: str) -> str | None:
    try:
        text = (domain_dir(data_dir, domain) / ACTIVE_FILE).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise DKIMKeyError(f"cannot read the active selector of {domain}: {exc}") from None
    return check_selector(text.strip()) if text.strip() else None


def domains(data_dir: Path) -> list[str]:
    """Domains that have an active key."""
    root = data_dir / "dkim"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / ACTIVE_FILE).is_file())


def read_private(path: Path) -> bytes:
    """The key file's content; DKIMKeyError when it is missing, unreadable, not a
    regular file, or readable by group/others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise DKIMKeyError(f"key file {path} is missing") from None
    except OSError as exc:
        raise DKIMKeyError(f"key file {path} is unreadable: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DKIMKeyError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise DKIMKeyError(f"key file {path} is readable by others (mode "
                               f"{stat.S_IMODE(info.st_mode):o}): run chmod 600 {path}")
        try:
            return handle.read()
        except OSError as exc:
            raise DKIMKeyError(f"key file {path} is unreadable: {exc.strerror}") from None


def algorithm_of(private: bytes, path: Path) -> Algorithm:
    if private.lstrip().startswith(RSA_PEM_HEADER) or b"BEGIN PRIVATE KEY" in private:
        return "rsa"
    try:
        if len(base64.b64decode(private.strip(), validate=True)) == 32:
            return "ed25519"
    except ValueError:
        pass
    raise DKIMKeyError(f"key file {path} holds neither an RSA PEM key nor an ed25519 seed")


def load_active(data_dir: Path, domain: str) -> SigningKey:
    domain = normalize_domain(domain)
    selector = active_selector(data_dir, domain)
    if selector is None:
        raise DKIMKeyError(f"{domain} has no active DKIM key (postwall dkim generate {domain})")
    path = key_path(data_dir, domain, selector)
    private = read_private(path)
    return SigningKey(domain, selector, algorithm_of(private, path), private.strip(), path)


def public_value(private: bytes, algorithm: Algorithm) -> str:
    """The `v=DKIM1; k=...; p=...` text of a private key."""
    if algorithm == "ed25519":
        import nacl.signing

        seed = base64.b64decode(private.strip())
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode('ascii')}"
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(private, password=None)
    except ValueError as exc:
        raise DKIMKeyError(f"unparsable RSA key: {exc}") from None
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def record_for(data_dir: Path, domain: str, selector: str) -> DKIMRecord:
    path = key_path(data_dir, domain, selector)
    private = read_private(path)
    algorithm = algorithm_of(private, path)
    created = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return DKIMRecord(
        normalize_domain(domain), check_selector(selector), algorithm,
        active_selector(data_dir, domain) == check_selector(selector),
        public_value(private, algorithm), created, path,
    )


def dns_records(data_dir: Path, domain: str) -> list[DKIMRecord]:
    """A record per selector of `domain` (active first, then newest first)."""
    directory = domain_dir(data_dir, domain)
    if not directory.is_dir():
        return []
    records = [record_for(data_dir, domain, p.stem) for p in directory.glob("*.key")
               if SELECTOR_RE.match(p.stem)]
    return sorted(records, key=lambda r: (not r.active, -r.created.timestamp(), r.selector))
