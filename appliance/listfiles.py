"""Lists kept in files (ASSP's `file:` entries), merged with the configuration and the
database, reloaded when a file changes.

A list setting may name files beside its entries: `whitelist: ["file:/etc/postwall/
lists/white.txt", "boss@example.com"]`. A file has one entry per line; blank lines and
lines starting with `#` are skipped; address and network lines may end in ` # comment`;
a pattern line may end in `=>WEIGHT` (ASSP's weighted regex).

Reloading is a stat per file on the maintenance tick (inode, size, mtime): no inotify,
and a rename over the file is seen like an in-place write. A file is read whole, parsed
and validated, and only then swapped in, so a lookup sees the old contents or the new,
never half. A file whose stat changes while it is read, or that changed less than
`settle_seconds` ago (an editor or script may still be writing), is read at a later tick.

Faults never empty a list by accident: a bad line is logged with file:line and skipped;
a file that cannot be read, or that became unsafe, keeps its last good contents in force.
A file anyone but root or the postwall user could write is refused: whoever can write
a whitelist decides what the gateway accepts.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import pwd
import re
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.config.schema import file_ref

log = logging.getLogger("postwall.listfiles")

MAX_FILE_BYTES = 64 * 1024 * 1024  # a list file is text; more is a mistake, not a list
MAX_LOGGED_BAD_LINES = 20  # per load; the count of the rest is logged
SETTLE_SECONDS = 1.0
SERVICE_USER = "postwall"
_WEIGHT_RE = re.compile(r"=>\s*(-?\d+(?:\.\d+)?)\s*$")



def split_refs(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """A list setting's entries: (plain entries, paths of its `file:` entries)."""
    plain: list[str] = []
    paths: list[str] = []
    for entry in entries:
        path = file_ref(entry)
        if path is None:
            plain.append(entry)
        else:
            paths.append(path)
    return plain, paths


class Kind(enum.Enum):
    """What a file's lines are: each kind has its own validation."""

    ADDRESS = "address"  # addresses, @domains, wildcards, /regex/ (white/black/... lists)
    NETWORK = "network"  # IP addresses and CIDR networks
    PATTERN = "pattern"  # regular expressions, optionally `=>weight`


@dataclass(frozen=True, slots=True)
class FileStamp:
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class ParsedLines:
    entries: tuple[str, ...]
    lines: tuple[int, ...]  # line number of each entry
    weights: tuple[float, ...]  # 1.0 except for weighted patterns
    errors: tuple[str, ...]  # "line N: what is wrong"


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """The last good contents of one file."""

    path: str
    kind: Kind
    entries: tuple[str, ...]
    lines: tuple[int, ...]
    weights: tuple[float, ...]
    bad_lines: int
    stamp: FileStamp
    loaded_at: float  # time.time()
    errors: tuple[str, ...] = ()  # "line N: what is wrong", for check-config and status


class ListFileError(Exception):
    """The file cannot be used now (unreadable, unsafe); the message says why."""


class FileBusy(Exception):
    """The file changed while it was read or moments ago: read it at a later tick."""


# -- parsing (pure) --------------------------------------------------------------------


def parse_lines(text: str, kind: Kind) -> ParsedLines:
    """Every valid entry of `text` with its line number; an error text per bad line."""
    from appliance.storage.lists import normalise_value  # storage imports the schema

    entries: list[str] = []
    lines: list[int] = []
    weights: list[float] = []
    errors: list[str] = []
    seen: set[tuple[str, float]] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        weight = 1.0
        if kind is Kind.PATTERN:
            value = line
            found = _WEIGHT_RE.search(line)
            if found is not None:
                value, weight = line[: found.start()].rstrip(), float(found.group(1))
            try:
                _check_pattern(value)
            except ValueError as exc:
                errors.append(f"line {number}: {exc}")
                continue
        else:
            value = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
            try:
                value = normalise_value("ip_allow" if kind is Kind.NETWORK else "whitelist",
                                        value)
            except ValueError as exc:
                errors.append(f"line {number}: {exc}")
                continue
        if (value, weight) in seen:
            continue
        seen.add((value, weight))
        entries.append(value)
        lines.append(number)
        weights.append(weight)
    return ParsedLines(tuple(entries), tuple(lines), tuple(weights), tuple(errors))


def _check_pattern(source: str) -> None:
    """A pattern must compile as the regex filter compiles it (Python's `re`; RE2 runs
    what it can and `appliance.patterns` falls back for the rest)."""
    from appliance.patterns import FLAGS

    if not source:
        raise ValueError("empty pattern")
    try:
        re.compile(source, FLAGS)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression {source!r}: {exc}") from None


# -- safety ----------------------------------------------------------------------------


def trusted_owners() -> frozenset[int]:
    """root, the user this process runs as, and the `postwall` service user if it exists."""
    owners = {0, os.geteuid()}
    with contextlib.suppress(KeyError):
        owners.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return frozenset(owners)


def unsafe_reason(path: str, st: os.stat_result, parent: os.stat_result | None,
                  owners: frozenset[int]) -> str | None:
    """Why a file with this stat must not be trusted as a list, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in owners:
        return (f"{path} is owned by uid {st.st_uid}, not by root or the postwall user: "
                "refusing it (whoever can write a list file controls what the gateway "
                "accepts); chown root it")
    if st.st_mode & stat.S_IWOTH:
        return (f"{path} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}): "
                "refusing it; chmod o-w it")
    if parent is not None and parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        return (f"the directory of {path} is writable by every user (mode "
                f"{stat.S_IMODE(parent.st_mode):04o}): anyone could replace the file; "
                "refusing it")
    return None


def read_file(path: str, kind: Kind, owners: frozenset[int],
              previous: FileStamp | None = None, settle_seconds: float = 0.0,
              *, log_bad_lines: bool = True) -> LoadedFile:
    """Read, check and parse `path`. Raises ListFileError (cannot be used), FileBusy
    (try later). Bad lines do not raise: they are counted and logged (unless the caller
    reports them itself, as check-config does)."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise ListFileError(f"cannot read {path}: {exc.strerror}") from None
    stamp = FileStamp.of(before)
    age = time.time() - before.st_mtime
    if previous is not None and 0 <= age < settle_seconds:
        raise FileBusy(f"{path} changed less than {settle_seconds:g} s ago")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ListFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        try:
            parent: os.stat_result | None = os.stat(os.path.dirname(path) or ".")
        except OSError:
            parent = None
        reason = unsafe_reason(path, opened, parent, owners)
        if reason is not None:
            raise ListFileError(reason)
        if opened.st_size > MAX_FILE_BYTES:
            raise ListFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not a list")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise ListFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not a list")
            chunks.append(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise ListFileError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        now = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileBusy(f"{path} was replaced while it was read") from None
        raise ListFileError(f"cannot read {path}: {exc.strerror}") from None
    if FileStamp.of(opened) != stamp or FileStamp.of(after) != stamp or \
            FileStamp.of(now) != stamp:
        raise FileBusy(f"{path} changed while it was read")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    parsed = parse_lines(text, kind)
    for error in parsed.errors[:MAX_LOGGED_BAD_LINES] if log_bad_lines else ():
        log.warning("list file %s:%s; the line is skipped, the rest of the file applies",
                    path, error.removeprefix("line "))
    if log_bad_lines and len(parsed.errors) > MAX_LOGGED_BAD_LINES:
        log.warning("list file %s: %d more bad lines skipped", path,
                    len(parsed.errors) - MAX_LOGGED_BAD_LINES)
    return LoadedFile(path, kind, parsed.entries, parsed.lines, parsed.weights,
                      len(parsed.errors), stamp, time.time(), parsed.errors)


# -- the files one process watches -------------------------------------------------------


@dataclass
class _Watched:
    loaded: LoadedFile | None = None
    problem: str | None = None  # the last problem logged, so it is logged once
    problem_since: float = 0.0


@dataclass
class FileState:
    """For status pages: a watched file, what is in force, and what is wrong."""

    path: str
    kind: Kind
    entries: int
    loaded_at: float | None
    problem: str | None = None
    bad_lines: int = 0
    lines: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    errors: tuple[str, ...] = ()  # "line N: what is wrong" of the contents in force


class ListFiles:
    """The list files one process uses, with their last good contents.

    `watch` names the files the configuration refers to (and reads new ones at once);
    `refresh` (blocking: run it in a thread) stats them and re-reads changed ones.
    `generation` increases whenever some file's contents in force changed."""

    def __init__(self, settle_seconds: float = SETTLE_SECONDS,
                 owners: frozenset[int] | None = None) -> None:
        self.settle_seconds = settle_seconds
        self.owners = owners if owners is not None else trusted_owners()
        self.generation = 0
        self._files: dict[tuple[str, Kind], _Watched] = {}
        self._wanted: frozenset[tuple[str, Kind]] = frozenset()
        self._lock = threading.Lock()  # refresh runs in a thread; watch on the loop

    def watch(self, refs: Iterable[tuple[str, Kind]]) -> None:
        """Watch exactly `refs`; files not seen before are read now."""
        wanted = frozenset(refs)
        with self._lock:
            self._wanted = wanted
            new = [ref for ref in wanted if ref not in self._files]
            for ref in new:
                self._files[ref] = _Watched()
        for path, kind in sorted(new, key=lambda r: (r[0], r[1].value)):
            self._load(path, kind, first=True)

    def refresh(self) -> bool:
        """Re-read every watched file whose stat changed; True if contents changed."""
        generation = self.generation
        for path, kind in sorted(self._wanted, key=lambda r: (r[0], r[1].value)):
            watched = self._files.get((path, kind))
            if watched is None:
                continue
            if watched.loaded is not None and watched.problem is None:
                try:
                    if FileStamp.of(os.stat(path)) == watched.loaded.stamp:
                        continue
                except OSError:
                    pass  # _load says what is wrong
            self._load(path, kind, first=False)
        return self.generation != generation

    def _load(self, path: str, kind: Kind, *, first: bool) -> None:
        watched = self._files[(path, kind)]
        previous = watched.loaded
        try:
            loaded = read_file(path, kind, self.owners,
                               previous.stamp if previous else None,
                               0.0 if first else self.settle_seconds)
        except FileBusy as exc:
            log.debug("list file: %s; reading it at the next check", exc)
            return
        except ListFileError as exc:
            self._problem(watched, path, str(exc))
            return
        with self._lock:
            watched.loaded = loaded
            changed = previous is None or previous.entries != loaded.entries or \
                previous.weights != loaded.weights
            if changed:
                self.generation += 1
        if watched.problem is not None:
            log.info("list file %s is usable again", path)
            watched.problem = None
        if changed or first:
            log.info("list file %s: %d %s entries in force%s", path, len(loaded.entries),
                     kind.value, f" ({loaded.bad_lines} bad lines skipped)"
                     if loaded.bad_lines else "")

    def _problem(self, watched: _Watched, path: str, problem: str) -> None:
        if problem == watched.problem:
            return
        watched.problem = problem
        watched.problem_since = time.time()
        if watched.loaded is not None:
            log.error("list file: %s; keeping its last good contents (%d entries read at "
                      "%s)", problem, len(watched.loaded.entries),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(
                          watched.loaded.loaded_at)))
        else:
            log.error("list file: %s; it adds no entries until it can be read", problem)

    def get(self, path: str, kind: Kind) -> LoadedFile | None:
        watched = self._files.get((path, kind))
        return watched.loaded if watched is not None else None

    def entries(self, path: str, kind: Kind) -> tuple[str, ...]:
        loaded = self.get(path, kind)
        return loaded.entries if loaded is not None else ()

    def states(self) -> list[FileState]:
        result = []
        for path, kind in sorted(self._wanted, key=lambda r: (r[0], r[1].value)):
            watched = self._files[(path, kind)]
            loaded = watched.loaded
            result.append(FileState(
                path, kind, len(loaded.entries) if loaded else 0,
                loaded.loaded_at if loaded else None, watched.problem,
                loaded.bad_lines if loaded else 0, errors=loaded.errors if loaded else (),
            ))
        return result


def inspect_files(refs: Iterable[tuple[str, Kind]],
                  owners: frozenset[int] | None = None) -> list[FileState]:
    """Read each file once, as the proxy would, and say what is wrong with it; logs
    nothing (check-config and `postwall status` report the problems themselves)."""
    owners = owners if owners is not None else trusted_owners()
    result = []
    for path, kind in sorted(set(refs), key=lambda r: (r[0], r[1].value)):
        try:
            loaded = read_file(path, kind, owners, log_bad_lines=False)
        except (ListFileError, FileBusy) as exc:
            result.append(FileState(path, kind, 0, None, str(exc)))
            continue
        result.append(FileState(path, kind, len(loaded.entries), loaded.loaded_at,
                                bad_lines=loaded.bad_lines, errors=loaded.errors))
    return result
