"""Method static: the valid_recipients list (configuration + database) and a file per
domain, read again when it changes."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from appliance.lists import ListIndex

log = logging.getLogger("postwall.recipients")

STAT_EVERY = 5.0  # seconds between checks whether the file changed


class RecipientFile:
    """A file of list entries (user@domain, @domain, *@domain, wildcards, /regex/),
    compiled into a ListIndex and re-read when its mtime, size or inode changes. A file
    that vanishes or cannot be read keeps the last good entries, with an error logged."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.index = ListIndex((), f"list_file {path}")
        self._load(initial=True)

    def _load(self, *, initial: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            if initial:
                raise ValueError(f"recipient list_file {self.path}: {exc.strerror}") from None
            log.error("recipient list_file %s cannot be read (%s): keeping the %d entries "
                      "read before", self.path, exc.strerror, len(self.index))
            return
        self.index = ListIndex(text.splitlines(), f"list_file {self.path}")
        self._stamp = stamp
        if not initial:
            log.info("recipient list_file %s changed: %d entries", self.path, len(self.index))

    def current(self) -> ListIndex:
        now = self._clock()
        if now - self._checked >= STAT_EVERY:
            self._checked = now
            self._load()
        return self.index
