"""The training corpus: a copy of every learned message, ``<root>/<digest>.eml``.

The ledger says what each message was learned as; the copy lets a correction unlearn
exactly the tokens it added and a rebuild recount everything after the tokenizer
changed or old messages left the corpus. Writes are crash-safe (temporary file, fsync,
rename); digests come from a strict pattern, so no caller can name a path outside.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640
SUFFIX = ".eml"
_DIGEST_RE = re.compile(r"[0-9a-f]{16,64}")


def validate_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid message digest {digest!r}")
    return digest


class CorpusStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            pass
        else:
            os.chmod(self.root, DIR_MODE)

    def path(self, digest: str) -> Path:
        return self.root / f"{validate_digest(digest)}{SUFFIX}"

    def keep(self, digest: str, content: bytes, *, durable: bool = True) -> Path:
        """Write the copy; `durable=False` skips the fsync of the file (a batch calls
        `sync` once at the end instead; a copy lost in a power cut only means the ledger
        entry is dropped at the next rebuild)."""
        final = self.path(digest)
        tmp = self.root / f".tmp-{digest}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return final

    def sync(self) -> None:
        """Make the renames of a batch durable."""
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, digest: str) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        with os.scandir(self.root) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(SUFFIX) and _DIGEST_RE.fullmatch(name[: -len(SUFFIX)]):
                    yield name[: -len(SUFFIX)]
