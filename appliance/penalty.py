"""A worker's view of the penalty box, and which events cost a client points.

Reads are in memory: every worker keeps the scores of all clients in the box (only
clients that misbehaved recently are there) and refreshes them from the database in
its maintenance tick. Points a worker hands out count in its own memory at once and go
to the database through a background writer, never on the event loop; the other
workers see them after their next refresh (a few seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from appliance.storage.penalty import PenaltyEvent, PenaltyStore, decayed
from appliance.storage.writer import BackgroundWriter
from appliance.verdict import Action, Reply, Symbol, SymbolSpec

if TYPE_CHECKING:
    from appliance.config.schema import PenaltyBoxSettings, PenaltyPoints
    from appliance.context import ConnectionContext, TransactionContext

log = logging.getLogger("postwall.penalty")

DNSBL_GROUP = "dnsbl"
VIRUS_SYMBOL = "CLAMAV_VIRUS"
HARVEST_SYMBOL = "RCPT_HARVEST"  # filters.recipient_verify closed the connection
REFRESH_OVERLAP = 30.0  # seconds re-read at every refresh: commits land a little late
FORGET_EVERY = 600.0  # seconds between sweeps of decayed clients out of memory


@dataclass(frozen=True, slots=True)
class Points:
    """Points for one kind of event, with the reason the box records."""

    points: float
    reason: str


def transaction_points(
    tx: TransactionContext,
    action: Action | None,
    reply: Reply | None,
    *,
    judged: bool,
    points: PenaltyPoints,
    declared: Mapping[str, SymbolSpec],
) -> list[Points]:
    """What one finished transaction costs its client. `judged` is False when the
    transaction ended before a check decided (client left, message too big...)."""
    out: list[Points] = []
    refused = sum(1 for _, text in tx.rejected_recipients if text[:1] == "5")
    if refused and points.rejected_recipient:
        out.append(Points(refused * points.rejected_recipient, f"{refused} rejected recipient(s)"))
    if points.directory_harvest and any(
        s.name == HARVEST_SYMBOL for s in tx.refusal_symbols
    ):
        out.append(Points(points.directory_harvest, "directory harvest (unknown recipients)"))
    # Symbols carried over from connect/helo are counted once per connection instead.
    out.extend(symbol_points(tx.symbols[len(tx.connection.symbols):], points, declared))
    blocked = action is Action.DISCARD or (
        action is Action.REJECT and reply is not None and reply.code >= 500
    )
    if judged and blocked and points.blocked_message:
        out.append(Points(points.blocked_message, f"message blocked: {reply or action.label}"))
    return out


def symbol_points(
    symbols: Iterable[Symbol], points: PenaltyPoints, declared: Mapping[str, SymbolSpec]
) -> list[Points]:
    """DNS blocklist listings (any symbol of group "dnsbl" that scored) and viruses."""
    out: list[Points] = []
    for symbol in symbols:
        if symbol.name == VIRUS_SYMBOL and points.virus:
            out.append(Points(points.virus, f"virus {symbol.reason}"[:120]))
            continue
        spec = declared.get(symbol.name)
        if spec is not None and spec.group == DNSBL_GROUP and symbol.score > 0 and points.dnsbl:
            out.append(Points(points.dnsbl, symbol.name))
    return out


def connection_points(
    conn: ConnectionContext,
    *,
    protocol_errors: int,
    closed_for_errors: bool,
    smuggling: int,
    points: PenaltyPoints,
    declared: Mapping[str, SymbolSpec],
) -> list[Points]:
    """What a finished connection costs its client beyond its transactions."""
    out: list[Points] = []
    if protocol_errors and points.protocol_error:
        out.append(Points(protocol_errors * points.protocol_error,
                          f"{protocol_errors} protocol error(s)"))
    if closed_for_errors and points.too_many_errors:
        out.append(Points(points.too_many_errors, "closed for too many errors"))
    if smuggling and points.smuggling:
        out.append(Points(smuggling * points.smuggling, "SMTP smuggling attempt"))
    if conn.pregreet and points.early_talker:
        out.append(Points(points.early_talker, "talked before the greeting"))
    out.extend(symbol_points(conn.symbols, points, declared))
    return out


class PenaltyBox:
    """Scores by client key (see `appliance.netblock.client_key`), as (score, at)."""

    def __init__(
        self, store: PenaltyStore | None, settings: PenaltyBoxSettings, *, record: bool = True
    ) -> None:
        self.store = store
        self.settings = settings
        self._scores: dict[str, tuple[float, float]] = {}
        self._counter: int | None = None
        self._refreshed_at: float | None = None
        self._forgotten_at = time.time()
        self._writer: BackgroundWriter[PenaltyEvent] | None = None
        if store is not None and record:
            self._writer = BackgroundWriter(
                self._write, name="penalty-writer", describe=_describe
            )

    def configure(self, settings: PenaltyBoxSettings) -> None:
        self.settings = settings

    @property
    def half_life(self) -> float:
        return self.settings.half_life

    def _write(self, events: list[PenaltyEvent]) -> None:
        assert self.store is not None
        self.store.add_many(events, half_life=self.half_life)

    # -- the hot path ---------------------------------------------------------------

    def score(self, key: str, now: float | None = None) -> float:
        known = self._scores.get(key)
        if known is None:
            return 0.0
        score, at = known
        return decayed(score, (time.time() if now is None else now) - at, self.half_life)

    def add(self, key: str, events: Iterable[Points], now: float | None = None) -> float:
        """Add points for `key`; returns its new score."""
        now = time.time() if now is None else now
        score = self.score(key, now)
        stamp = datetime.fromtimestamp(now, UTC)
        for event in events:
            if event.points <= 0:
                continue
            score += event.points
            if self._writer is not None:
                self._writer.submit(PenaltyEvent(key, event.points, event.reason, stamp))
        self._scores[key] = (score, now)
        return score

    # -- refresh from the database (maintenance tick) ---------------------------------

    def load(self) -> None:
        """Read every score (at start; blocking, so never on a busy event loop)."""
        if self.store is None:
            return
        started = time.time()
        counter = self.store.change_counter()
        entries = self.store.changed_since(None)
        self._scores = {e.client: (e.score, e.updated_at.timestamp()) for e in entries}
        self._counter, self._refreshed_at = counter, started

    async def refresh(self) -> None:
        """Pick up points other workers gave, and clears made by the CLI or web UI."""
        store = self.store
        if store is None:
            return
        started = time.time()
        counter = await asyncio.to_thread(store.change_counter)
        if counter != self._counter or self._refreshed_at is None:
            entries = await asyncio.to_thread(store.changed_since, None)
            self._scores = {e.client: (e.score, e.updated_at.timestamp()) for e in entries}
        else:
            since = datetime.fromtimestamp(self._refreshed_at - REFRESH_OVERLAP, UTC)
            entries = await asyncio.to_thread(store.changed_since, since)
            scores = self._scores
            for entry in entries:
                at = entry.updated_at.timestamp()
                local = scores.get(entry.client)
                if local is None or at >= local[1]:
                    scores[entry.client] = (entry.score, at)
        self._counter, self._refreshed_at = counter, started
        if started - self._forgotten_at >= FORGET_EVERY:
            self._forgotten_at = started
            self.forget_decayed(self.settings.forget_below, started)

    def forget_decayed(self, below: float, now: float | None = None) -> int:
        """Drop clients whose score decayed below `below` from memory."""
        now = time.time() if now is None else now
        doomed = [key for key in self._scores if self.score(key, now) < below]
        for key in doomed:
            del self._scores[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._scores)

    def close(self) -> None:
        # Sessions still lingering after the close only count in memory from now on.
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _describe(event: PenaltyEvent) -> str:
    return f"penalty event {event.client} +{event.points:g} ({event.reason})"
