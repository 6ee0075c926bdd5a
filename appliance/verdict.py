"""The closed vocabulary every filter speaks: stages, symbols, finals, verdicts, actions.

Pure types with no I/O, so the pipeline, the scorer, the log and the analyzer all share
one explanation of a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Stage(StrEnum):
    """SMTP stage a filter runs at; connect-stage checks run at the first command."""

    CONNECT = "connect"
    # After the optional greeting delay, before the 220 (postscreen's pregreet test);
    # runs right after CONNECT when there is no delay.
    GREETING = "greeting"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


STAGE_ORDER: tuple[Stage, ...] = (
    Stage.CONNECT, Stage.GREETING, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA
)


class Mode(StrEnum):
    """How much power an operator gives a filter."""

    OFF = "off"
    SCORE = "score"  # finals are downgraded to their symbol: it can only add score
    BLOCK = "block"  # finals (reject, tempfail, accept) take effect


class OnError(StrEnum):
    """What a crash or a timeout of a filter means for the message."""

    FAIL_OPEN = "fail_open"  # record a zero-score NAME_ERROR symbol and carry on
    TEMPFAIL = "tempfail"  # answer 451 so the sender retries later


class Decision(StrEnum):
    ACCEPT = "accept"  # whitelist / noprocessing: stop scoring, deliver
    REJECT = "reject"
    TEMPFAIL = "tempfail"


class Action(IntEnum):
    """What happens to a message; ordered by severity so max() picks the strongest."""

    DELIVER = 0
    TAG = 1
    QUARANTINE = 2
    DISCARD = 3
    REJECT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply with its enhanced status code (RFC 3463)."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("SMTP reply text must be a single line")

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """A symbol a filter declares it may emit, with its default weight and meaning."""

    name: str
    weight: float
    description: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Symbol:
    """One finding: a declared name, the score it contributes and a short reason."""

    name: str
    score: float
    reason: str = ""

    def __str__(self) -> str:
        reason = f' "{self.reason}"' if self.reason else ""
        return f"{self.name} {self.score:+.1f}{reason}"


@dataclass(frozen=True, slots=True)
class Final:
    """A decision that ends evaluation. `force` beats an earlier ACCEPT (a virus beats a
    whitelist)."""

    decision: Decision
    symbol: Symbol
    reply: Reply | None = None
    force: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    symbols: tuple[Symbol, ...] = ()
    final: Final | None = None


NO_FINDINGS = Verdict()
