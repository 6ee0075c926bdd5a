"""What one worker knows about clients across connections: the penalty box, the
greylist cache and the shared rate windows, with the events that feed them.

Built once per worker (it outlives configuration reloads, so nothing learnt is lost on
SIGHUP); `configure` follows each reload. Everything here is cheap in the event loop:
reads are in memory, writes go to background writer threads, refreshes run in threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.greylist import Greylist
from appliance.lists import IPIndex
from appliance.netblock import client_key
from appliance.penalty import PenaltyBox, Points, connection_points, transaction_points
from appliance.smtp.rates import RateWindows
from appliance.verdict import Action, Mode, Reply, SymbolSpec

if TYPE_CHECKING:
    from appliance.config.schema import Config
    from appliance.context import ConnectionContext, TransactionContext
    from appliance.services import ListRegistry
    from appliance.storage.facade import Storage

log = logging.getLogger("postwall.clients")

RATES_FILE = Path("run") / "rates"


class ClientState:
    def __init__(self, config: Config, storage: Storage | None, *, record: bool = True) -> None:
        self.storage = storage
        self.penalty = PenaltyBox(
            storage.penalty if storage is not None else None,
            config.filters.penalty_box, record=record,
        )
        self.greylist = Greylist(
            storage.greylist if storage is not None else None,
            config.filters.greylist, record=record,
        )
        self.rates = _open_rates(storage, create=record)
        self._relay_nets = IPIndex((), "relay_networks")
        self._lists: ListRegistry | None = None
        self.penalty_on = False
        self.greylist_on = False
        self.greeting_delay = 0.0
        self.configure(config)
        if storage is not None:  # at start only: later refreshes run in a thread
            self.penalty.load()
            self.greylist.load()

    def configure(self, config: Config, lists: ListRegistry | None = None) -> None:
        filters = config.filters
        self.config = config
        self.penalty.configure(filters.penalty_box)
        self.greylist.configure(filters.greylist)
        self.penalty_on = filters.penalty_box.mode is not Mode.OFF
        self.greylist_on = filters.greylist.mode is not Mode.OFF
        early = filters.early_talker
        self.greeting_delay = early.greeting_delay if early.mode is not Mode.OFF else 0.0
        self._relay_nets = IPIndex(config.relay_networks, "relay_networks")
        if lists is not None:
            self._lists = lists

    def is_exempt(self, conn: ConnectionContext) -> bool:
        """The relay listener, relay_networks and ip_allow clients: trusted hosts that
        are neither delayed, limited nor penalised (worked out once per connection)."""
        trusted = conn.trusted
        if trusted is None:
            ip = conn.peer_ip
            allow = self._lists.ip_allow if self._lists is not None else None
            trusted = conn.trusted = (
                conn.is_relay
                or (bool(self._relay_nets) and self._relay_nets.match(ip) is not None)
                or (bool(allow) and allow.match(ip) is not None)
            )
        return trusted or conn.accepted_by is not None

    @staticmethod
    def key_of(conn: ConnectionContext) -> str:
        """The client's key for penalty scores and rates (IPv4 address or IPv6 /64)."""
        key = conn.client_key
        if key is None:
            key = conn.client_key = client_key(conn.peer_ip)
        return key

    # -- events -------------------------------------------------------------------------

    def observe_transaction(
        self, tx: TransactionContext, action: Action | None, reply: Reply | None, *,
        judged: bool, declared: Mapping[str, SymbolSpec],
    ) -> None:
        if not self.penalty_on or self.is_exempt(tx.connection):
            return
        events = transaction_points(
            tx, action, reply, judged=judged, points=self.config.filters.penalty_box.points,
            declared=declared,
        )
        if events:
            self._penalise(tx.connection, events)

    def observe_connection(
        self, conn: ConnectionContext, *, protocol_errors: int, closed_for_errors: bool,
        smuggling: int, declared: Mapping[str, SymbolSpec],
    ) -> None:
        if not self.penalty_on or self.is_exempt(conn):
            return
        events = connection_points(
            conn, protocol_errors=protocol_errors, closed_for_errors=closed_for_errors,
            smuggling=smuggling, points=self.config.filters.penalty_box.points,
            declared=declared,
        )
        if events:
            self._penalise(conn, events)

    def _penalise(self, conn: ConnectionContext, events: list[Points]) -> None:
        key = self.key_of(conn)
        score = self.penalty.add(key, events)
        log.info("penalty box: %s +%g (%s) -> %.1f", key, sum(e.points for e in events),
                 "; ".join(e.reason for e in events), score)

    # -- maintenance ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """The maintenance tick: pick up other workers' and operators' changes."""
        if self.penalty_on:
            await self.penalty.refresh()
        if self.greylist_on:
            await self.greylist.refresh()

    def retention(self) -> tuple[int, int]:
        """Delete what is no longer needed (blocking: run it in a thread, one worker)."""
        if self.storage is None:
            return 0, 0
        settings = self.config.filters
        triplets = self.storage.greylist.purge(
            retry_window=settings.greylist.retry_window,
            keep_for=settings.greylist.pass_days * 86400.0,
        )
        clients = self.storage.penalty.purge(
            half_life=settings.penalty_box.half_life, below=settings.penalty_box.forget_below
        )
        return triplets, clients

    def close(self) -> None:
        self.penalty.close()
        self.greylist.close()
        self.rates.close()


def _open_rates(storage: Storage | None, *, create: bool) -> RateWindows:
    """The appliance-wide rate file next to the connection counts; private memory
    without a data directory (check-config), when the file cannot be opened, or for a
    dry run before the proxy made it (`postwall analyze` run by another user must not
    create a file the proxy cannot open)."""
    if storage is None:
        return RateWindows()
    path = storage.data_dir / RATES_FILE
    if not create and not path.exists():
        return RateWindows()
    try:
        return RateWindows(path)
    except OSError as exc:
        log.error("rate limits are per process: cannot open %s: %s", path, exc)
        return RateWindows()
