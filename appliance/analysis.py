"""Run the whole pipeline on one message without sending it: the explanation shared by
`postwall analyze`, the web UI's analyzer and the analyze@ mail command."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from email.utils import getaddresses

from appliance import actions, mime
from appliance.authresults import resinfos
from appliance.context import ConnectionContext, Listener, RecipientContext, TransactionContext
from appliance.runtime import Runtime
from appliance.verdict import STAGE_ORDER, Reply, Stage, Symbol


@dataclass
class Analysis:
    sender: str
    recipients: list[str]
    client_ip: str
    helo: str | None
    stages: list[tuple[Stage, Symbol]] = field(default_factory=list)
    total: float = 0.0
    action: str = "deliver"
    reason: str = ""
    reply: str = ""
    stopped_at: Stage | None = None
    # What SPF/DKIM/DMARC found, as the Authentication-Results header would say it.
    auth_results: list[str] = field(default_factory=list)
    bayes: str = ""  # the tokens that decided the Bayesian score, rendered

    def render(self) -> str:
        lines = [
            f"envelope: from=<{self.sender}> to={', '.join(self.recipients)} "
            f"ip={self.client_ip} helo={self.helo or '(not given: HELO checks skipped)'}",
            f"{'stage':8} {'symbol':28} {'score':>7}  reason",
        ]
        for stage, symbol in self.stages:
            lines.append(f"{stage.value:8} {symbol.name:28} {symbol.score:>+7.2f}  {symbol.reason}")
        if not self.stages:
            lines.append("(no symbols)")
        lines.append(f"total: {self.total:g}")
        lines.append(f"action: {self.action} ({self.reason})")
        if self.reply:
            lines.append(f"reply: {self.reply}")
        for item in self.auth_results:
            lines.append(f"auth: {item}")
        if self.bayes:
            lines.append(self.bayes)
        return "\n".join(lines)


def default_envelope(content: bytes, config_domains: list[str]) -> tuple[str, list[str]]:
    message = mime.parse_headers(content)
    senders = getaddresses([mime.decoded_header(message, "Return-Path"),
                            mime.decoded_header(message, "From")])
    sender = next((addr for _, addr in senders if "@" in addr), "")
    rcpts = [addr for _, addr in getaddresses([mime.decoded_header(message, h)
                                               for h in ("To", "Cc")]) if "@" in addr]
    if not rcpts:
        domain = next((d for d in config_domains if not d.startswith("*.")), "localhost")
        rcpts = [f"postmaster@{domain}"]
    return sender, rcpts


async def analyze(
    runtime: Runtime, content: bytes, *, sender: str | None = None,
    recipients: list[str] | None = None, client_ip: str = "192.0.2.1", helo: str | None = None,
) -> Analysis:
    """Every stage as the SMTP dialogue would run it, connect-stage DNS checks included
    (the runtime's resolver is asked; `services.dry_run` keeps stateful checks from
    writing). Without a HELO name the helo stage is skipped rather than judging a
    made-up one."""
    default_sender, default_rcpts = default_envelope(content, runtime.config.local_domains)
    sender = default_sender if sender is None else sender
    recipients = recipients or default_rcpts
    ip = ipaddress.ip_address(client_ip)
    conn = ConnectionContext(peer_ip=ip, peer_port=0, listener=Listener.INBOUND, helo=helo)
    tx = TransactionContext(connection=conn, mail_from=sender)
    report = Analysis(sender, recipients, str(ip), helo)
    seen = 0
    for stage in STAGE_ORDER:
        if stage is Stage.HELO and helo is None:
            continue
        if stage is Stage.RCPT:
            for rcpt in recipients:
                tx.current_rcpt = RecipientContext(rcpt)
                result = await runtime.pipeline.run(stage, tx)
                if result.final is None:
                    tx.rcpt_tos.append(rcpt)
            tx.current_rcpt = None
            if not tx.rcpt_tos and tx.final is not None:
                report.stopped_at = stage
        else:
            if stage is Stage.DATA:
                tx.content = content
            result = await runtime.pipeline.run(stage, tx)
            if result.final is not None:
                report.stopped_at = stage
        report.stages.extend((stage, s) for s in tx.symbols[seen:])
        seen = len(tx.symbols)
        if report.stopped_at is not None:
            break
    if tx.content is None:
        tx.content = content
    outcome = actions.decide(tx, runtime.config, runtime.declared)
    report.auth_results = resinfos(tx.auth)
    report.total = outcome.total
    report.action = outcome.action.label
    report.reason = outcome.reason
    reply: Reply | None = outcome.reply
    report.reply = str(reply) if reply is not None else ""
    report.bayes = explain_bayes(runtime, tx)
    return report


def explain_bayes(runtime: Runtime, tx: TransactionContext) -> str:
    """The tokens behind the BAYES_* symbol, when the classifier has a table."""
    from appliance.classifier.explain import explain
    from appliance.filters.bayes import model_settings, tokenizer_settings

    table = runtime.services.bayes
    if table is None or tx.content is None:
        return ""
    config = runtime.config
    store = runtime.storage.training if runtime.storage is not None else None
    return explain(
        tx.message, table, tokenizer_settings(config.filters.bayes, config.scoring.subject_prefix),
        model_settings(config.filters.bayes), store,
    ).render()
