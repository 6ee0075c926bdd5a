"""Everything one worker process holds while it serves: configuration, pipeline, lists,
storage handles, the downstream pool and the live sessions. Reload swaps it in place."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from appliance import metrics, mime, notify
from appliance.client_state import ClientState
from appliance.commands.interface import CommandInterface
from appliance.config import loader
from appliance.config.loader import LoadedConfig
from appliance.context import ConnectionContext, IPAddress, TransactionContext
from appliance.dkim_signing import DKIMSigner
from appliance.dns import Resolver
from appliance.filters.clamav import is_virus
from appliance.filters.registry import build_filters, declared_symbols, is_red
from appliance.learning_loop import LearningLoop
from appliance.listfiles import ListFiles
from appliance.ops import probe
from appliance.ops.flag import active_flag
from appliance.pipeline import Pipeline
from appliance.recipients.verifier import RecipientVerifier
from appliance.services import ListRegistry, Services, list_file_refs
from appliance.smtp import replies
from appliance.smtp.downstream import DownstreamPool
from appliance.smtp.limits import ConnectionCounts
from appliance.storage.messagelog import MessageLogEntry, MessageLogWriter
from appliance.verdict import Action, Reply, Symbol

if TYPE_CHECKING:
    from appliance.smtp.session import PostwallSMTP
    from appliance.storage.facade import Storage

log = logging.getLogger("postwall.runtime")

# log_transaction reasons of transactions no check decided (the penalty box counts
# only their refused recipients, not a "blocked message").
UNJUDGED = ("not judged", "connect:")

KEEP_FOLDER = {
    Action.QUARANTINE: "spam",
    Action.REJECT: "spam",
    Action.DISCARD: "discarded",
}


class Runtime:
    def __init__(
        self, loaded: LoadedConfig, storage: Storage | None, *, worker: int = 0,
        record: bool = True, counts: ConnectionCounts | None = None,
    ) -> None:
        self.worker = worker
        self.storage = storage
        self.lists = ListRegistry()
        # List files (`file:` entries) keep their last good contents across reloads.
        self.list_files = ListFiles()
        self._list_counter: int | None = None
        self._next_expiry: datetime | None = None  # entries lapse without a counter change
        self.sessions: set[PostwallSMTP] = set()
        self.counts = counts if counts is not None else ConnectionCounts()
        self.draining = False
        # Upgrades and restores: new sessions get 421, messages 451 (appliance/ops). A
        # worker started while a maintenance window is open starts in maintenance.
        self.maintenance_flag = active_flag(loaded.config.data_dir)
        self.maintenance = self.maintenance_flag is not None
        if self.maintenance:
            log.warning("worker %d starts in maintenance (%s window open)", worker,
                        self.maintenance_flag)
        self._sessions_changed = asyncio.Event()
        self.log_writer = (
            MessageLogWriter(storage.messagelog) if storage is not None and record else None
        )
        self.record = record
        # One resolver for the life of the worker: its cache outlives configuration reloads.
        self.resolver = Resolver(loaded.config.dns)
        # Penalty box, greylist cache and rate windows: they outlive reloads too.
        self.client_state = ClientState(loaded.config, storage, record=record)
        self.learning = LearningLoop(storage)  # classifier table, personal lists, learning
        self.commands = CommandInterface(self)  # spam@, help@, ... at the report domain
        # Recipient verification's cache and callout/LDAP connections outlive reloads.
        self.recipient_verifier = RecipientVerifier(loaded.config.filters.recipient_verify)
        self.apply(loaded)
        self.pool = DownstreamPool(self.config.downstream, self.config.smtp.hostname)
        self.dkim_signer = DKIMSigner(self.config)  # outgoing mail (relay listener)

    # -- configuration ---------------------------------------------------------

    def apply(self, loaded: LoadedConfig) -> None:
        """Build everything derived from the configuration; raise before changing anything
        if it cannot be built, so a bad reload leaves the old configuration serving."""
        config = loaded.config
        db_values = self._db_list_values()
        self.list_files.watch(list_file_refs(config))
        lists = ListRegistry()
        lists.rebuild(config, db_values, self.list_files)
        services = Services(
            lists=lists, resolver=self.resolver, storage=self.storage, dry_run=not self.record,
            clients=self.client_state, list_files=self.list_files,
            recipient_verifier=self.recipient_verifier,
        )
        filters = build_filters(config, services)
        declared = declared_symbols(config=config)
        pipeline = Pipeline(filters, declared, test_mode=config.test_mode)
        exact = frozenset(d for d in config.local_domains if not d.startswith("*."))
        suffixes = tuple(d[1:] for d in config.local_domains if d.startswith("*."))
        relay_nets = tuple(ipaddress.ip_network(n) for n in config.relay_networks)
        # Commit: nothing above touched self.
        self.loaded = loaded
        self.config = config
        self.resolver.configure(config.dns)
        self.client_state.configure(config, lists)
        self.lists = lists
        self.services = services
        self.pipeline = pipeline
        self.declared = declared
        self._local_exact = exact
        self._local_suffixes = suffixes
        self._relay_nets = relay_nets
        self.learning.configure(config, services)
        self.health_token = probe.read_token(config.data_dir)
        if hasattr(self, "dkim_signer"):
            self.dkim_signer.configure(config)
        if self.record:  # mail to the administrator (a dry run, such as analyze, sends none)
            notify.configure(config)
        if hasattr(self, "pool"):
            # Idle connections may lead to an old downstream: new transactions reconnect.
            self.pool.drop_idle()
            self.pool.settings = config.downstream
            self.pool.helo_name = config.smtp.hostname

    def reload(self) -> bool:
        try:
            loaded = loader.load(self.loaded.base_path)
            self.apply(loaded)
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        log.info("configuration reloaded (worker %d)", self.worker)
        return True

    def _db_list_values(self) -> dict[str, list[str]]:
        if self.storage is None:
            return {}
        return self.storage.lists.active_values()

    async def refresh_lists(self) -> None:
        """Pick up list changes made by other processes (web UI, mail commands, workers)
        and changed list files."""
        files_changed = await asyncio.to_thread(self.list_files.refresh)
        if self.storage is None:
            if files_changed:
                await asyncio.to_thread(self.lists.rebuild, self.config, {}, self.list_files)
            return
        counter = await asyncio.to_thread(self.storage.lists.change_counter)
        expired = self._next_expiry is not None and datetime.now(UTC) >= self._next_expiry
        if counter == self._list_counter and not expired and not files_changed:
            return
        values = await asyncio.to_thread(self.storage.lists.active_values)
        self._next_expiry = await asyncio.to_thread(self.storage.lists.next_expiry)
        # Compiling large lists takes a while: off the event loop; the swap is atomic.
        await asyncio.to_thread(self.lists.rebuild, self.config, values, self.list_files)
        self._list_counter = counter

    # -- connections -------------------------------------------------------------

    @staticmethod
    def parse_peer(server: PostwallSMTP) -> tuple[IPAddress, int]:
        peer = server.session.peer or ("0.0.0.0", 0)
        ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip, int(peer[1])

    @staticmethod
    def parse_local(server: PostwallSMTP) -> IPAddress | None:
        """The address of ours the client connected to (None if the socket cannot say)."""
        transport = server.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if not sockname:
            return None
        try:
            ip = ipaddress.ip_address(str(sockname[0]).split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip

    def session_opened(self, server: PostwallSMTP) -> bool:
        """Count the session; `server.limit_exceeded` names a limit it would break."""
        self.sessions.add(server)
        limits = self.config.limits
        server.limit_exceeded = self.counts.try_open(
            server.peer_ip_text, limits.max_connections, limits.max_connections_per_ip
        )
        metrics.CONNECTIONS.labels(server.listener.value).inc()
        metrics.ACTIVE_SESSIONS.labels(server.listener.value).inc()
        return True

    async def all_sessions_closed(self) -> None:
        while self.sessions:
            self._sessions_changed.clear()
            await self._sessions_changed.wait()

    def session_closed(self, server: PostwallSMTP) -> None:
        self.sessions.discard(server)
        self._sessions_changed.set()
        if server.limit_exceeded is None:
            self.counts.close(server.peer_ip_text)
        session = server.session
        if session is not None and session.conn is not None:
            self.client_state.observe_connection(
                session.conn, protocol_errors=session.protocol_errors,
                closed_for_errors=session.closed_for_errors, smuggling=session.smuggling,
                declared=self.declared,
            )
        metrics.ACTIVE_SESSIONS.labels(server.listener.value).dec()

    def admission(self, server: PostwallSMTP) -> Reply | None:
        if self.maintenance:
            return self.maintenance_reply()
        if self.draining:
            return replies.SHUTTING_DOWN
        exceeded = server.limit_exceeded
        if exceeded is None:
            return None
        metrics.CONNECTIONS_REFUSED.labels(exceeded).inc()
        if exceeded == "max_connections":
            return replies.TOO_MANY_CONNECTIONS
        return replies.TOO_MANY_FROM_IP

    def maintenance_reply(self) -> Reply:
        return replies.maintenance_closing(self.config.smtp.hostname)

    def set_maintenance(self, on: bool) -> int:
        """Maintenance on: new sessions are refused with 421, a message whose end of data
        arrives gets 451, and every session is closed with 421 as soon as no message of
        it is being judged or relayed (nothing accepted is lost, nothing half-accepted).
        Returns how many sessions were closed at once."""
        self.maintenance = on
        if not on:
            self.maintenance_flag = None
            return 0
        closed = 0
        for session in list(self.sessions):
            if session.close_for_maintenance():
                closed += 1
        log.info("maintenance on (worker %d): %d idle session(s) closed, %d finishing",
                 self.worker, closed, len(self.sessions) - closed)
        return closed

    def is_relay_client(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._relay_nets)

    def is_local_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self._local_exact or domain.endswith(self._local_suffixes)

    # -- after a message ----------------------------------------------------------

    async def keep_copy(self, tx: TransactionContext, action: Action) -> str | None:
        if self.storage is None or tx.content is None:
            return None
        store = self.config.store
        if is_virus(tx):
            # Only in virus/, never in spam/ or okmail/ where it could be released.
            if not self.config.filters.clamav.keep_virus:
                return None
            path = await asyncio.to_thread(self.storage.mail.keep, "virus", tx.id, tx.content)
            return str(path)
        folder = KEEP_FOLDER.get(action)
        if (folder == "spam" and not store.spam) or (folder == "discarded" and not store.discarded):
            folder = None
        if folder is None:
            if tx.accepted_by is not None and store.okmail:
                folder = "okmail"
            elif action in (Action.DELIVER, Action.TAG) and store.notspam:
                folder = "notspam"
        paths = []
        for name in filter(None, (folder, "archive" if store.archive else None)):
            path = await asyncio.to_thread(self.storage.mail.keep, name, tx.id, tx.content)
            paths.append(str(path))
        return paths[0] if paths else None

    def learn_outgoing(self, tx: TransactionContext) -> None:
        """Recipients of outgoing mail become trusted senders and the message is learned
        as ham, unless the sender is red."""
        settings = self.config.autowhitelist
        if self.storage is None or not tx.rcpt_tos:
            return
        if self.lists.redlist.match(tx.mail_from) or is_red(tx.symbols):
            return
        self.learning.learn_outgoing(tx)
        if not settings.enabled:
            return
        expires = datetime.now(UTC) + timedelta(days=settings.days)
        recipients = [r.lower() for r in tx.rcpt_tos]
        task = asyncio.get_running_loop().run_in_executor(
            None, self._add_autowhitelist, recipients, expires
        )
        task.add_done_callback(_log_failure)

    def _add_autowhitelist(self, recipients: list[str], expires: datetime) -> None:
        assert self.storage is not None
        self.storage.lists.add_many("autowhitelist", recipients, expires_at=expires, source="auto")

    def observe_downstream(self, seconds: float) -> None:
        metrics.DOWNSTREAM_LATENCY.observe(seconds)

    def count_error(self, kind: str) -> None:
        metrics.ERRORS.labels(kind).inc()

    def log_refusal(
        self, conn: ConnectionContext, reply: Reply, reason: str,
        symbols: list[Symbol] | None = None,
    ) -> None:
        tx = TransactionContext(connection=conn, symbols=list(symbols or ()))
        self.log_transaction(tx, Action.REJECT, 0.0, reply, None, f"connect: {reason}")

    def log_transaction(
        self, tx: TransactionContext, action: Action | None, total: float, reply: Reply | None,
        downstream_reply: str | None, reason: str, kept: str | None = None,
    ) -> None:
        self.client_state.observe_transaction(
            tx, action, reply, judged=not reason.startswith(UNJUDGED), declared=self.declared
        )
        label = action.label if action is not None else "aborted"
        if reply is not None and reply.is_temporary and action is Action.REJECT:
            label = "tempfail"
        elif reply is None and action is Action.REJECT and tx.rejected_recipients and all(
            text[:1] == "4" for _, text in tx.rejected_recipients
        ):
            label = "tempfail"  # every recipient deferred (greylisted, say): it will return
        listener = tx.connection.listener.value
        metrics.MESSAGES.labels(listener, label).inc()
        for symbol in tx.symbols:
            metrics.SYMBOL_HITS.labels(symbol.name).inc()
        conn = tx.connection
        scored = {s.name for s in tx.symbols}
        logged = tx.symbols + [s for s in tx.refusal_symbols if s.name not in scored]
        reply_text = str(reply) if reply is not None else "; ".join(
            f"{rcpt}: {text}" for rcpt, text in tx.rejected_recipients
        )
        log.info(
            "tx=%s listener=%s ip=%s from=<%s> to=%s size=%d action=%s score=%g reply=%r "
            "reason=%s symbols=%s",
            tx.id, listener, conn.peer_ip, tx.mail_from, ",".join(tx.rcpt_tos) or "-",
            tx.size, label, total, reply_text, reason,
            " ".join(f"{s.name}({s.score:g})" for s in logged) or "-",
        )
        if self.log_writer is None:
            return
        self.log_writer.submit(MessageLogEntry(
            id=tx.id,
            time=datetime.fromtimestamp(tx.started_at, UTC),
            listener=listener,
            client_ip=str(conn.peer_ip),
            helo=conn.helo or "",
            sender=tx.mail_from,
            recipients=list(tx.rcpt_tos) or [r for r, _ in tx.rejected_recipients],
            subject=subject_of(tx),
            size=tx.size,
            symbols=[(s.name, s.score, s.reason) for s in logged],
            total=total,
            action=label,
            reply=reply_text,
            downstream_reply=downstream_reply,
            duration_ms=round((time.time() - tx.started_at) * 1000, 2),
            quarantine_path=kept,
        ))

    async def close(self) -> None:
        await self.pool.close()
        await self.recipient_verifier.close()
        await asyncio.to_thread(self.client_state.close)
        await self.learning.close()
        if self.log_writer is not None:
            await asyncio.to_thread(self.log_writer.close)


def subject_of(tx: TransactionContext) -> str:
    if tx.content is None:
        return ""
    try:
        if "message" in tx.__dict__:
            return mime.decoded_header(tx.message, "Subject")[:300]
        return mime.decoded_header(mime.parse_headers(tx.content), "Subject")[:300]
    except Exception:  # a subject we cannot decode must not lose the log row
        return ""


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("autowhitelist update failed: %s", future.exception())
