"""What a recipient lookup found (pure types)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Existence(StrEnum):
    EXISTS = "exists"
    UNKNOWN = "unknown"
    # The verifier could not say (target down, timeout, 4xx, bad credentials): the
    # domain's on_unavailable decides.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Lookup:
    existence: Existence
    detail: str  # for the log and the symbol's reason: who answered what
    cached: bool = False

    @property
    def exists(self) -> bool:
        return self.existence is Existence.EXISTS


class VerifierUnavailable(Exception):
    """The verifier could not answer; the message says why, for the log."""
