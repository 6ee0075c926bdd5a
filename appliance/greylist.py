"""Greylisting logic: triplets, the decision, and a worker's cache of them.

A triplet is (client network, sender, recipient). Its first attempt is delayed; a retry
after `delay` and within `retry_window` passes, and the triplet then passes for
`pass_days` after its last use. The decision (`judge`) is pure. `Greylist` keeps the
triplets this worker has seen in a bounded memory cache; a triplet it has not seen is
looked up in the database in a thread (another worker may have seen it), and every
change goes to the database through a background writer, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from appliance.storage.greylist import MAX_ADDRESS, EventKind, GreylistEvent, GreylistStore
from appliance.storage.writer import BackgroundWriter

if TYPE_CHECKING:
    from appliance.config.schema import GreylistSettings

NULL_SENDER = "<>"
CACHE_ENTRIES = 200_000
SEEN_REFRESH = 3600.0  # a passed triplet's last use is written at most this often
REFRESH_OVERLAP = 30.0

# Senders that change with every message of the same correspondent would be a new
# triplet each time (postgrey's sender substitutions): BATV/SRS tags, VERP numbers and
# +extensions are removed or generalised.
_BATV_RE = re.compile(r"^(?:prvs|msprvs1|btv1)=[^=]*=", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\b\d+\b")


def normalise_sender(sender: str) -> str:
    """The sender as a triplet sees it: lower-cased, variable parts generalised,
    ``<>`` for the null sender."""
    if not sender:
        return NULL_SENDER
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        return sender.lower()[:MAX_ADDRESS]
    local = _BATV_RE.sub("", local)
    local = local.split("+", 1)[0] or local
    local = _NUMBER_RE.sub("#", local)
    return f"{local}@{domain}"[:MAX_ADDRESS]


def normalise_recipient(recipient: str) -> str:
    return recipient.lower()[:MAX_ADDRESS]


class Outcome(StrEnum):
    NEW = "new"  # first attempt: delay it
    EARLY = "early"  # retried before the delay was over: delay it again
    EXPIRED = "expired"  # retried after the retry window: a new first attempt
    RETRIED = "retried"  # retried after the delay: pass, and remember
    KNOWN = "known"  # passed before and still fresh: pass


PASSING = frozenset({Outcome.RETRIED, Outcome.KNOWN})


@dataclass(frozen=True, slots=True)
class Policy:
    delay: float
    retry_window: float
    keep_for: float  # seconds a passed triplet lives after its last use

    @classmethod
    def of(cls, settings: GreylistSettings) -> Policy:
        return cls(settings.delay, settings.retry_window, settings.pass_days * 86400.0)


@dataclass(slots=True)
class TripletState:
    first_seen: float
    last_seen: float
    passed: bool


@dataclass(frozen=True, slots=True)
class Judgement:
    outcome: Outcome
    remaining: float  # seconds until a retry passes (delayed outcomes only)
    first_seen: float

    @property
    def passes(self) -> bool:
        return self.outcome in PASSING


def judge(state: TripletState | None, now: float, policy: Policy) -> Judgement:
    """The decision for one attempt of a triplet in `state` (None: never seen)."""
    if state is None:
        return Judgement(Outcome.NEW, policy.delay, now)
    if state.passed:
        if now - state.last_seen <= policy.keep_for:
            return Judgement(Outcome.KNOWN, 0.0, state.first_seen)
        return Judgement(Outcome.EXPIRED, policy.delay, now)
    age = now - state.first_seen
    if age > policy.retry_window:
        return Judgement(Outcome.EXPIRED, policy.delay, now)
    if age >= policy.delay and now > state.first_seen:
        return Judgement(Outcome.RETRIED, 0.0, state.first_seen)
    return Judgement(Outcome.EARLY, max(policy.delay - age, 0.0), state.first_seen)


class Greylist:
    """One worker's greylist: a bounded cache of triplets and the client networks'
    pass counts, backed by `store` (None: memory only, as in unit tests)."""

    def __init__(
        self,
        store: GreylistStore | None,
        settings: GreylistSettings,
        *,
        record: bool = True,
        max_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.store = store
        self.record = record
        self.max_entries = max_entries
        self._triplets: OrderedDict[tuple[str, str, str], TripletState] = OrderedDict()
        self._client_passes: dict[str, int] = {}
        self._client_seen: dict[str, float] = {}
        self._counter: int | None = None
        self._refreshed_at: float | None = None
        self._writer: BackgroundWriter[GreylistEvent] | None = None
        if store is not None and record:
            self._writer = BackgroundWriter(
                store.record_many, name="greylist-writer", describe=_describe
            )
        self.configure(settings)

    def configure(self, settings: GreylistSettings) -> None:
        self.settings = settings
        self.policy = Policy.of(settings)

    # -- the hot path -------------------------------------------------------------------

    def client_whitelisted(self, client_net: str) -> int | None:
        """The pass count of an auto-whitelisted client network, else None."""
        threshold = self.settings.auto_whitelist_after
        passes = self._client_passes.get(client_net, 0)
        return passes if threshold > 0 and passes >= threshold else None

    def client_used(self, client_net: str, now: float | None = None) -> None:
        """An auto-whitelisted network sent again: keep it (written at most hourly)."""
        now = time.time() if now is None else now
        if now - self._client_seen.get(client_net, 0.0) < SEEN_REFRESH:
            return
        self._client_seen[client_net] = now
        self._emit(EventKind.CLIENT_SEEN, (client_net, "", ""), now)

    async def check(
        self, client_net: str, sender: str, recipient: str, now: float | None = None
    ) -> Judgement:
        """Judge one attempt and remember it. `sender` and `recipient` are normalised."""
        now = time.time() if now is None else now
        key = (client_net, sender, recipient)
        state = await self._state(key)
        verdict = judge(state, now, self.policy)
        self._remember(key, state, verdict, now)
        return verdict

    async def peek(
        self, client_net: str, sender: str, recipient: str, now: float | None = None
    ) -> Judgement:
        """What `check` would decide, remembering nothing (a dry run)."""
        state = await self._state((client_net, sender, recipient))
        return judge(state, time.time() if now is None else now, self.policy)

    async def _state(self, key: tuple[str, str, str]) -> TripletState | None:
        """From memory, else from the database (in a thread: another worker may know it)."""
        state = self._triplets.get(key)
        if state is None and self.store is not None:
            entry = await asyncio.to_thread(self.store.lookup, *key)
            if entry is not None:
                state = TripletState(
                    entry.first_seen.timestamp(), entry.last_seen.timestamp(), entry.passed
                )
        return state

    def _remember(
        self, key: tuple[str, str, str], state: TripletState | None, verdict: Judgement,
        now: float,
    ) -> None:
        outcome = verdict.outcome
        if outcome is Outcome.NEW or outcome is Outcome.EXPIRED:
            state = TripletState(now, now, False)
            kind = EventKind.RESTART if outcome is Outcome.EXPIRED else EventKind.ATTEMPT
            self._emit(kind, key, now, now)
        elif outcome is Outcome.EARLY:
            assert state is not None
            state.last_seen = now
            self._emit(EventKind.ATTEMPT, key, now, state.first_seen)
        elif outcome is Outcome.RETRIED:
            assert state is not None
            state.passed, state.last_seen = True, now
            self._client_passes[key[0]] = self._client_passes.get(key[0], 0) + 1
            self._emit(EventKind.PASS, key, now, state.first_seen)
        else:
            assert state is not None
            if now - state.last_seen >= SEEN_REFRESH:
                state.last_seen = now
                self._emit(EventKind.SEEN, key, now)
        triplets = self._triplets
        triplets[key] = state
        triplets.move_to_end(key)
        while len(triplets) > self.max_entries:
            triplets.popitem(last=False)

    def _emit(
        self, kind: EventKind, key: tuple[str, str, str], now: float,
        first_seen: float | None = None,
    ) -> None:
        if self._writer is None:
            return
        self._writer.submit(GreylistEvent(
            kind, *key, at=datetime.fromtimestamp(now, UTC),
            first_seen=datetime.fromtimestamp(first_seen, UTC) if first_seen is not None else None,
        ))

    # -- refresh from the database (maintenance tick) ---------------------------------

    def load(self) -> None:
        """Read the client networks (at start; blocking, so never on a busy loop)."""
        if self.store is None:
            return
        started = time.time()
        counter = self.store.change_counter()
        self._client_passes = {c.client_net: c.passes for c in self.store.clients()}
        self._counter, self._refreshed_at = counter, started

    async def refresh(self) -> None:
        """Pick up client networks other workers counted, and clears by an operator."""
        store = self.store
        if store is None:
            return
        started = time.time()
        counter = await asyncio.to_thread(store.change_counter)
        if counter != self._counter or self._refreshed_at is None:
            self._triplets.clear()  # cleared by an operator: forget what we cached
            clients = await asyncio.to_thread(store.clients)
            self._client_passes = {c.client_net: c.passes for c in clients}
        else:
            since = datetime.fromtimestamp(self._refreshed_at - REFRESH_OVERLAP, UTC)
            clients = await asyncio.to_thread(store.clients, since=since)
            passes = self._client_passes
            for client in clients:
                # Our own passes may not be written yet: never count down.
                passes[client.client_net] = max(passes.get(client.client_net, 0), client.passes)
        self._counter, self._refreshed_at = counter, started

    def flush(self, timeout: float | None = None) -> bool:
        return self._writer.flush(timeout) if self._writer is not None else True

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _describe(event: GreylistEvent) -> str:
    return f"greylist {event.kind.value} {event.client_net} {event.sender} {event.recipient}"
