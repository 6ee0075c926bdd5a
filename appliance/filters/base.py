"""The contract every check implements, and the helpers it inherits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from appliance.verdict import (
    Decision,
    Final,
    Mode,
    OnError,
    Reply,
    Stage,
    Symbol,
    SymbolSpec,
    Verdict,
)

if TYPE_CHECKING:
    from appliance.config.schema import Config, FilterSettings
    from appliance.context import TransactionContext
    from appliance.services import Services


class UndeclaredSymbolError(KeyError):
    """A filter emitted a symbol it did not declare: a programming error, never a score."""


class Filter(ABC):
    name: ClassVar[str]  # config section under `filters:` and log key
    stage: ClassVar[Stage]
    symbols: ClassVar[tuple[SymbolSpec, ...]]
    default_on_error: ClassVar[OnError] = OnError.FAIL_OPEN
    # Checks that must run even for whitelisted mail (a virus beats a whitelist).
    overrides_accept: ClassVar[bool] = False
    # Outgoing mail from the relay listener is never spam-scored; few checks apply to it.
    applies_to_relay: ClassVar[bool] = False
    # Checks that wait on another process (DNS, clamd) run under `timeout`; a local check
    # never yields to the event loop, so a timer could not interrupt it anyway and would
    # only cost a timer per message (its work is bounded by its own limits instead).
    waits_on_network: ClassVar[bool] = False

    def __init__(
        self,
        settings: FilterSettings,
        weights: Mapping[str, float],
        config: Config,
        services: Services,
    ) -> None:
        self.settings = settings
        self.mode: Mode = settings.mode
        self.timeout: float = settings.timeout
        self.on_error: OnError = settings.on_error or self.default_on_error
        self.config = config
        self.services = services
        specs = (*self.symbols, *self.configured_symbols(settings))
        self._weights = {spec.name: weights.get(spec.name, spec.weight) for spec in specs}
        self.setup()

    @classmethod
    def configured_symbols(cls, settings: FilterSettings) -> tuple[SymbolSpec, ...]:
        """Symbols the configuration declares (one per DNS list zone, say), besides the
        fixed `symbols`; the registry declares them like those."""
        return ()

    def setup(self) -> None:
        """Prepare what the check needs from `self.settings` (compile patterns...)."""
        return

    def weight(self, name: str) -> float:
        try:
            return self._weights[name]
        except KeyError:
            raise UndeclaredSymbolError(f"{self.name} emitted undeclared symbol {name}") from None

    def hit(self, name: str, reason: str = "", factor: float = 1.0) -> Symbol:
        """A symbol scored with its configured weight (times `factor`, e.g. a regex weight)."""
        return Symbol(name, round(self.weight(name) * factor, 3), reason[:200])

    def found(self, *symbols: Symbol) -> Verdict:
        return Verdict(symbols=tuple(symbols))

    def reject(self, name: str, reason: str, reply: Reply, *, force: bool = False) -> Verdict:
        return Verdict(final=Final(Decision.REJECT, self.hit(name, reason), reply, force))

    def tempfail(self, name: str, reason: str, reply: Reply) -> Verdict:
        return Verdict(final=Final(Decision.TEMPFAIL, self.hit(name, reason), reply))

    def accept(self, name: str, reason: str) -> Verdict:
        return Verdict(final=Final(Decision.ACCEPT, self.hit(name, reason)))

    @abstractmethod
    async def check(self, ctx: TransactionContext) -> Verdict:
        """Judge the transaction at this filter's stage; never mutate the envelope."""

    def describe(self) -> str:
        timeout = f", timeout={self.timeout:g}s" if self.waits_on_network else ""
        return (
            f"{self.name} ({self.stage.value}, {self.mode.value}, "
            f"on_error={self.on_error.value}{timeout})"
        )


def spec_weight(filter_: Filter | type[Filter], name: str) -> float:
    for spec in filter_.symbols:
        if spec.name == name:
            return spec.weight
    raise UndeclaredSymbolError(name)


def error_symbol_name(filter_name: str) -> str:
    return f"{filter_name.upper()}_ERROR"
