"""The aiosmtpd adapter: SMTP stages -> pipeline -> replies, with the in-line relay.

The only module that touches aiosmtpd's Envelope: a hook that accepts sets the state
itself, and a recipient enters the envelope only after Postfix accepted it too."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from appliance import actions
from appliance.context import ConnectionContext, RecipientContext, TransactionContext
from appliance.ops import probe
from appliance.smtp import replies
from appliance.smtp.client import CONTROL_RE
from appliance.smtp.downstream import DownstreamError, DownstreamTransaction
from appliance.verdict import Action, Decision, Final, Reply, Stage

if TYPE_CHECKING:
    from aiosmtpd.smtp import Envelope

    from appliance.runtime import Runtime
    from appliance.smtp.session import PostwallSession, PostwallSMTP

log = logging.getLogger("postwall.smtp")

FORBIDDEN_LOCAL_PART_CHARS = ("%", "!", "@")


BACKGROUND_PARSE_BYTES = 256 * 1024
BACKGROUND_PARSE_BOUNDARIES = 50


def needs_background_parse(content: bytes | None) -> bool:
    if content is None:
        return False
    return len(content) > BACKGROUND_PARSE_BYTES or (
        content.count(b"boundary=") > BACKGROUND_PARSE_BOUNDARIES
    )


def _reply_for_final(final: Final, default: Reply) -> Reply:
    if final.reply is not None:
        return final.reply
    return default


class Handler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- connection ---------------------------------------------------------

    async def on_connect(self, server: PostwallSMTP) -> Reply | None:
        """Limits, the relay ACL and connect-stage filters, before the greeting."""
        runtime = self.runtime
        session = server.session
        ip, port = runtime.parse_peer(server)
        conn = ConnectionContext(peer_ip=ip, peer_port=port, listener=server.listener)
        conn.local_ip = runtime.parse_local(server)
        session.conn = conn
        refusal = runtime.admission(server)
        if refusal is not None:
            runtime.log_refusal(conn, refusal, "limit")
            return refusal
        if conn.is_relay and not runtime.is_relay_client(ip):
            runtime.log_refusal(conn, replies.RELAY_CLIENT_DENIED, "relay acl")
            return replies.RELAY_CLIENT_DENIED
        tx = TransactionContext(connection=conn)
        result = await runtime.pipeline.run(Stage.CONNECT, tx)
        conn.symbols = tx.symbols
        conn.accepted_by = tx.accepted_by
        if result.final is not None:
            reply = _reply_for_final(result.final, replies.LOCAL_ERROR)
            if result.final.decision is Decision.TEMPFAIL:
                reply = Reply(421, reply.enhanced or "4.7.0", reply.text)
            runtime.log_refusal(conn, reply, result.final.symbol.name, tx.symbols)
            return reply
        return await self._greeting_stage(server, conn, tx)

    async def _greeting_stage(
        self, server: PostwallSMTP, conn: ConnectionContext, tx: TransactionContext
    ) -> Reply | None:
        """The optional greeting delay (postscreen's pregreet test), then the
        greeting-stage checks. What the client sends before the greeting is kept aside
        in `conn.pregreet`, never read as commands; trusted clients are not delayed."""
        runtime = self.runtime
        delay = runtime.client_state.greeting_delay
        if delay > 0 and not runtime.client_state.is_exempt(conn):
            conn.pregreet = await server.wait_before_greeting(delay)
        result = await runtime.pipeline.run(Stage.GREETING, tx)
        conn.symbols = tx.symbols
        conn.accepted_by = tx.accepted_by
        if result.final is None:
            return None
        reply = _reply_for_final(result.final, replies.LOCAL_ERROR)
        if result.final.decision is Decision.TEMPFAIL:
            reply = Reply(421, reply.enhanced or "4.7.0", reply.text)
        runtime.log_refusal(conn, reply, result.final.symbol.name, tx.symbols)
        return reply

    async def _helo_stage(self, session: PostwallSession, hostname: str) -> Reply | None:
        conn = session.conn
        assert conn is not None
        conn.helo = hostname
        # A second HELO/EHLO (after STARTTLS, or a retry) is judged afresh: the findings
        # of the previous one go, or they would count twice.
        kept = conn.symbols[: len(conn.symbols) - len(conn.helo_symbols)]
        tx = TransactionContext(connection=conn, symbols=list(kept))
        tx.accepted_by = conn.accepted_by
        result = await self.runtime.pipeline.run(Stage.HELO, tx)
        conn.helo_symbols = tuple(tx.symbols[len(kept):])
        conn.symbols = tx.symbols
        conn.accepted_by = tx.accepted_by
        if result.final is not None:
            return _reply_for_final(result.final, replies.LOCAL_ERROR)
        return None

    async def handle_EHLO(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope,
        hostname: str, responses: list[str],
    ) -> list[str]:
        await self._end_transaction(session, "EHLO")
        assert session.conn is not None
        session.conn.esmtp = True
        refusal = await self._helo_stage(session, hostname)
        if refusal is not None:
            return [str(refusal)]
        session.host_name = hostname
        out = [r for r in responses if not r[4:].startswith("AUTH")]
        out.insert(len(out) - 1, "250-PIPELINING")
        out.insert(len(out) - 1, "250-ENHANCEDSTATUSCODES")
        # One write for the whole multi-line reply instead of aiosmtpd's one per line.
        return ["\r\n".join(out)]

    async def handle_HELO(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope, hostname: str
    ) -> str:
        await self._end_transaction(session, "HELO")
        assert session.conn is not None
        session.conn.esmtp = False
        refusal = await self._helo_stage(session, hostname)
        if refusal is not None:
            return str(refusal)
        session.host_name = hostname
        return f"250 {server.hostname}"

    # -- transaction ----------------------------------------------------------

    async def handle_MAIL(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope,
        address: str, mail_options: list[str],
    ) -> str:
        conn = session.conn
        assert conn is not None
        limits = self.runtime.config.limits
        if conn.transactions >= limits.max_transactions:
            server.close_with(replies.TOO_MANY_MESSAGES)
            return str(replies.TOO_MANY_MESSAGES)
        await self._end_transaction(session, "new MAIL")
        if CONTROL_RE.search(address):
            return str(replies.BAD_SENDER_SYNTAX)
        if not address.isascii() and "SMTPUTF8" not in mail_options:
            return str(replies.NEEDS_SMTPUTF8)
        conn.transactions += 1
        # aiosmtpd spells the null reverse-path "<>" (it needs a true value to detect a
        # nested MAIL); the context, the filters and the downstream MAIL use "".
        tx = TransactionContext(
            connection=conn, mail_from="" if address == "<>" else address,
            mail_options=tuple(mail_options),
            symbols=list(conn.symbols),
        )
        tx.accepted_by = conn.accepted_by
        result = await self.runtime.pipeline.run(Stage.MAIL, tx)
        if result.final is not None:
            self.runtime.log_transaction(tx, Action.REJECT, 0.0, _reply_for_final(
                result.final, replies.LOCAL_ERROR), None, "MAIL")
            return str(_reply_for_final(result.final, replies.LOCAL_ERROR))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        session.tx = tx
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope,
        address: str, rcpt_options: list[str],
    ) -> str:
        tx = session.tx
        assert tx is not None
        runtime = self.runtime
        address = self._qualify_postmaster(address)
        if len(envelope.rcpt_tos) >= runtime.config.limits.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if CONTROL_RE.search(address):
            refusal: Reply | None = replies.BAD_RECIPIENT_SYNTAX
        elif not address.isascii() and "SMTPUTF8" not in tx.mail_options:
            refusal = replies.NEEDS_SMTPUTF8
        else:
            command_reply = runtime.commands.rcpt(tx, address)
            if command_reply is not None:  # a command address, or a mix with commands
                if command_reply.is_success:
                    envelope.rcpt_tos.append(address)
                else:
                    tx.rejected_recipients.append((address, str(command_reply)))
                return str(command_reply)
            refusal = self._relay_check(tx, address)
        if refusal is not None:
            tx.rejected_recipients.append((address, str(refusal)))
            return str(refusal)
        tx.current_rcpt = RecipientContext(address, tuple(rcpt_options))
        saved_final, saved_accept = tx.final, tx.accepted_by
        saved_symbols = len(tx.symbols)
        result = await runtime.pipeline.run(Stage.RCPT, tx)
        relayed = tx.current_rcpt.relay_address or address  # BATV tag stripped, SRS reversed
        tx.current_rcpt = None
        if result.final is not None:
            # A refused recipient must not doom the others in the same transaction:
            # neither its final nor its findings (e.g. its personal blacklist) remain.
            tx.final, tx.accepted_by = saved_final, saved_accept
            del tx.symbols[saved_symbols:]
            if all(s.name != result.final.symbol.name for s in tx.refusal_symbols):
                tx.refusal_symbols.append(result.final.symbol)
            reply = _reply_for_final(result.final, replies.LOCAL_ERROR)
            tx.rejected_recipients.append((address, str(reply)))
            if reply.code == 421:  # a check ends the session (directory harvest)
                server.close_with(reply)
            return str(reply)
        reply = await self._relay_recipient(session, tx, relayed)
        if reply.is_success:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            tx.rcpt_tos.append(relayed)
            if relayed != address:
                tx.rewritten_rcpts[relayed] = address
        else:
            tx.rejected_recipients.append((address, str(reply)))
        return str(reply)

    def _qualify_postmaster(self, address: str) -> str:
        """RFC 5321 4.5.1: a bare "Postmaster" must be accepted; it means ours."""
        if address.lower() == "postmaster":
            domain = next(
                (d for d in self.runtime.config.local_domains if not d.startswith("*.")), None
            )
            if domain is not None:
                return f"postmaster@{domain}"
        return address

    def _relay_check(self, tx: TransactionContext, address: str) -> Reply | None:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return replies.BAD_RECIPIENT_SYNTAX
        if tx.connection.is_relay:
            return None
        if any(c in local for c in FORBIDDEN_LOCAL_PART_CHARS):
            return replies.RELAY_DENIED
        if not self.runtime.is_local_domain(domain):
            return replies.RELAY_DENIED
        return None

    async def _relay_recipient(
        self, session: PostwallSession, tx: TransactionContext, address: str
    ) -> Reply:
        if session.downstream is None and tx.rcpt_tos:
            # The downstream transaction broke after accepting recipients: a new one would
            # carry only the later recipients while the earlier ones were promised delivery.
            return replies.DOWNSTREAM_UNAVAILABLE
        try:
            if session.downstream is None:
                downstream = DownstreamTransaction(self.runtime.pool)
                reply = await downstream.begin(tx.relay_sender, list(tx.mail_options), address)
                if downstream.active:
                    session.downstream = downstream
                return reply
            return await session.downstream.add_recipient(address)
        except DownstreamError as exc:
            log.warning("tx=%s downstream unavailable at RCPT: %s", tx.id, exc)
            self.runtime.count_error("downstream")
            if session.downstream is not None:
                session.downstream.discard_now()
                session.downstream = None
            return exc.reply

    async def handle_DATA(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope
    ) -> str:
        tx = session.tx
        downstream = session.downstream
        assert tx is not None
        session.tx = None
        session.downstream = None
        runtime = self.runtime
        tx.content = envelope.content  # type: ignore[assignment]
        if tx.command_rcpts:  # consumed by the appliance, never relayed
            reply = await runtime.commands.data(tx)
            tx.rcpt_tos = list(tx.command_rcpts)
            runtime.log_transaction(tx, Action.DELIVER, 0.0, reply, None, "command")
            return str(reply)
        try:
            reply, outcome, downstream_reply, kept = await self._judge_and_relay(tx, downstream)
        except BaseException:
            if downstream is not None:
                downstream.discard_now()
            raise
        runtime.log_transaction(
            tx, outcome.action, outcome.total, reply, downstream_reply, outcome.reason, kept
        )
        return str(reply)

    async def _judge_and_relay(
        self, tx: TransactionContext, downstream: DownstreamTransaction | None
    ) -> tuple[Reply, actions.Outcome, str | None, str | None]:
        runtime = self.runtime
        config = runtime.config
        inbound = not tx.connection.is_relay
        if inbound and needs_background_parse(tx.content):
            # Parsing a large or deeply nested message takes long enough to stall every
            # other session of this worker; the parse fills the cached tx.message.
            await asyncio.to_thread(getattr, tx, "message")
        await runtime.pipeline.run(Stage.DATA, tx)
        outcome = actions.decide(tx, config, runtime.declared)
        if probe.is_probe(tx.content, tx.connection.peer_ip, runtime.health_token):
            return await self._answer_probe(tx, downstream, outcome)
        kept = None
        if inbound:
            kept = await runtime.keep_copy(tx, outcome.action)
        if not outcome.delivers or (
            outcome.action is Action.QUARANTINE and config.scoring.quarantine_delivers == "no"
        ):
            if downstream is not None:
                await downstream.abort()
            reply = outcome.reply if outcome.action is Action.REJECT else replies.DISCARDED
            assert reply is not None
            return reply, outcome, None, kept
        if downstream is None or downstream.recipients != tx.rcpt_tos:
            # Postfix lost the transaction after recipients were accepted: the client must
            # retry the whole message rather than have some recipients silently dropped.
            if downstream is not None:
                await downstream.abort()
            return replies.DOWNSTREAM_FAILED, outcome, None, kept
        rendered = actions.render(tx, outcome, config, inbound=inbound)
        if not inbound:
            # Signed last, over the exact octets that leave (our headers included).
            signed = await runtime.dkim_signer.sign(tx, rendered)
            if signed is None:  # no usable key and on_key_error: tempfail
                await downstream.abort()
                return replies.DKIM_KEY_UNAVAILABLE, outcome, None, kept
            rendered = signed
        started = time.monotonic()
        try:
            reply = await downstream.send(rendered)
        except DownstreamError as exc:
            log.warning("tx=%s downstream failed at DATA: %s", tx.id, exc)
            runtime.count_error("downstream")
            return exc.reply, outcome, str(exc), kept
        runtime.observe_downstream(time.monotonic() - started)
        if reply.is_success and not inbound:
            runtime.learn_outgoing(tx)
        return reply, outcome, str(reply), kept

    async def _answer_probe(
        self, tx: TransactionContext, downstream: DownstreamTransaction | None,
        outcome: actions.Outcome,
    ) -> tuple[Reply, actions.Outcome, str | None, str | None]:
        """The health gate's message (appliance/ops/probe.py): judged like any other,
        never delivered nor kept; Postfix's side of it is reset."""
        if downstream is None or downstream.recipients != tx.rcpt_tos:
            if downstream is not None:
                await downstream.abort()
            return replies.DOWNSTREAM_FAILED, outcome, None, None
        await downstream.abort()
        reply = replies.health_check_passed(outcome.action.label, outcome.total)
        logged = dataclasses.replace(
            outcome, reason=f"health check, not delivered ({outcome.reason})"
        )
        return reply, logged, None, None

    async def handle_RSET(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope
    ) -> str:
        await self._end_transaction(session, "RSET")
        return str(replies.OK)

    async def handle_QUIT(
        self, server: PostwallSMTP, session: PostwallSession, envelope: Envelope
    ) -> str:
        await self._end_transaction(session, "QUIT")
        return "221 2.0.0 Bye"

    async def abort_transaction(
        self, server: PostwallSMTP, reason: str, reply: Reply | None = None
    ) -> None:
        """DATA went wrong before the message was judged (too big, NUL, timeout...)."""
        await self._end_transaction(server.session, reason, reply)

    async def _end_transaction(
        self, session: PostwallSession, reason: str, reply: Reply | None = None
    ) -> None:
        """A transaction that ends without a judged message: undo it downstream, log it."""
        downstream, session.downstream = session.downstream, None
        tx, session.tx = session.tx, None
        if downstream is not None:
            try:
                await asyncio.shield(downstream.abort())
            except asyncio.CancelledError:
                downstream.discard_now()
                raise
        if tx is not None:
            action = Action.REJECT if reply is not None or tx.rejected_recipients else None
            self.runtime.log_transaction(tx, action, 0.0, reply, None, f"not judged: {reason}")
