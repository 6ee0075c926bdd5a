"""Apply an action to a message: choose it from symbols and finals, and render the
headers and subject tag that travel with the delivered copy."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from appliance.authresults import authserv_id_of
from appliance.authresults import header_value as auth_results_value
from appliance.config.schema import Config
from appliance.context import TransactionContext
from appliance.scoring import score
from appliance.verdict import Action, Decision, Reply, Symbol, SymbolSpec

SPAMLOVER_SYMBOL = "SPAMLOVER"

# Headers we write; copies arriving from outside are removed so nobody can forge a verdict.
OWN_HEADER_RE = re.compile(
    rb"^(?:X-Postwall-[A-Za-z-]*|X-Spam-(?:Status|Score|Symbols|Flag|Level))[ \t]*:"
    rb"[^\n]*\n(?:[ \t][^\n]*\n)*",
    re.IGNORECASE | re.MULTILINE,
)
# RFC 8601 5: Authentication-Results fields claiming our authserv-id are forgeries (only
# we may write them); fields of other authserv-ids are left alone.
AUTH_RESULTS_RE = re.compile(
    rb"^Authentication-Results[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)", re.IGNORECASE | re.MULTILINE
)
SUBJECT_RE = re.compile(rb"^Subject[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
HEADER_END_RE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    total: float
    reply: Reply | None  # set for reject/tempfail decided before the downstream is asked
    reason: str  # one line for the log: which rule decided

    @property
    def delivers(self) -> bool:
        return self.action in (Action.DELIVER, Action.TAG, Action.QUARANTINE)


def decide(tx: TransactionContext, config: Config, declared: dict[str, SymbolSpec]) -> Outcome:
    """The action for a transaction whose data-stage filters have run."""
    result = score(tx.symbols, declared, config.scoring)
    final = tx.final
    if final is not None and final.decision is Decision.TEMPFAIL:
        return Outcome(Action.REJECT, result.total, final.reply, f"tempfail {final.symbol.name}")
    if final is not None and final.decision is Decision.REJECT:
        return Outcome(Action.REJECT, result.total, final.reply, f"blocked by {final.symbol.name}")
    if tx.accepted_by is not None:
        return Outcome(Action.DELIVER, result.total, None, f"accepted by {tx.accepted_by}")
    action = result.action
    reason = f"score {result.total:g}"
    if tx.blocked_in_test_mode is not None:
        action = max(action, Action.TAG)
        reason = f"test mode: would be blocked by {tx.blocked_in_test_mode.symbol.name}"
    if config.test_mode and action > Action.TAG:
        reason = f"test mode: would {action.label} ({reason})"
        action = Action.TAG
    if action > Action.TAG and all_spamlovers(tx):
        reason = f"spamlover recipients: would {action.label} ({reason})"
        action = Action.TAG
    reply = None
    if action is Action.REJECT:
        code, enhanced, text = config.scoring.reject_reply.split(" ", 2)
        reply = Reply(int(code), enhanced, text)
    return Outcome(action, result.total, reply, reason)


def all_spamlovers(tx: TransactionContext) -> bool:
    lovers = {s.reason.lower() for s in tx.symbols if s.name == SPAMLOVER_SYMBOL}
    return bool(tx.rcpt_tos) and all(r.lower() in lovers for r in tx.rcpt_tos)


def strip_own_headers(content: bytes, authserv_id: str | None = None) -> bytes:
    """Remove forged X-Spam-* / X-Postwall-* headers, and Authentication-Results fields
    naming `authserv_id`, from the header block only."""
    match = HEADER_END_RE.search(content)
    if match is None:
        return content
    head = content[: match.start() + 2]
    cleaned = head
    if OWN_HEADER_RE.search(head) is not None:
        cleaned = OWN_HEADER_RE.sub(b"", head)
    if authserv_id:
        cleaned = strip_auth_results(cleaned, authserv_id)
    if cleaned is head:
        return content
    return cleaned + content[match.start() + 2 :]


def strip_auth_results(head: bytes, authserv_id: str) -> bytes:
    """`head` without the Authentication-Results fields whose authserv-id is ours."""
    ours = authserv_id.lower()

    def keep_others(field: re.Match[bytes]) -> bytes:
        body = field.group(1).decode("utf-8", "replace")
        return b"" if authserv_id_of(body) == ours else field.group(0)

    if AUTH_RESULTS_RE.search(head) is None:
        return head
    return AUTH_RESULTS_RE.sub(keep_others, head)


def header_line(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def fold(items: list[str], width: int = 76) -> str:
    """Fold a comma-separated list across header lines (RFC 5322 2.2.3)."""
    lines: list[str] = []
    current = ""
    for item in items:
        piece = item if not current else f", {item}"
        if current and len(current) + len(piece) > width:
            lines.append(current + ",")
            current = item
        else:
            current += piece
    if current:
        lines.append(current)
    return "\r\n\t".join(lines)


def symbol_summary(symbols: list[Symbol]) -> list[str]:
    return [f"{s.name}={s.score:g}" for s in symbols]


def received_header(tx: TransactionContext, hostname: str) -> bytes:
    conn = tx.connection
    helo = (conn.helo or "unknown").replace("\r", "").replace("\n", "")[:200]
    proto = "ESMTP" if conn.esmtp else "SMTP"
    if conn.tls:
        proto += "S"
    if any(o.upper() == "SMTPUTF8" for o in tx.mail_options):
        proto = "UTF8" + proto
    rcpt = f"\r\n\tfor <{tx.rcpt_tos[0]}>" if len(tx.rcpt_tos) == 1 else ""
    # RFC 5321 4.4 TCP-info: the client's name only once its PTR is forward-confirmed.
    client = f"{conn.ptr_name} [{conn.peer_ip}]" if conn.fcrdns and conn.ptr_name else (
        f"[{conn.peer_ip}]"
    )
    value = (
        f"from {helo} ({client})\r\n\tby {hostname} (Postwall) with {proto} "
        f"id {tx.id}{rcpt};\r\n\t{formatdate(time.time(), localtime=False, usegmt=True)}"
    )
    return header_line("Received", value)


def render(
    tx: TransactionContext, outcome: Outcome, config: Config, *, inbound: bool
) -> bytes:
    """The octets relayed downstream: our headers on top, the original message below."""
    assert tx.content is not None
    hostname = config.smtp.hostname
    content = strip_own_headers(tx.content, hostname) if inbound else tx.content
    top = [received_header(tx, hostname)]
    if inbound:
        top.append(header_line("Authentication-Results", auth_results_value(hostname, tx.auth)))
    top.append(header_line("X-Postwall-Id", tx.id))
    if inbound and tx.accepted_by is None:
        spam = outcome.action >= Action.TAG
        required = config.scoring.thresholds.tag
        status = f"{'Yes' if spam else 'No'}, score={outcome.total:g}"
        if required is not None:
            status += f" required={required:g}"
        top.append(header_line("X-Spam-Status", status))
        top.append(header_line("X-Spam-Score", f"{outcome.total:g}"))
        if tx.symbols:
            top.append(header_line("X-Spam-Symbols", fold(symbol_summary(tx.symbols))))
        if spam:
            top.append(header_line("X-Spam-Flag", "YES"))
            content = tag_subject(content, config.scoring.subject_prefix)
    elif inbound:
        top.append(header_line("X-Spam-Status", f"No, accepted by {tx.accepted_by}"))
    return b"".join(top) + content


def tag_subject(content: bytes, prefix: str) -> bytes:
    if not prefix:
        return content
    encoded = prefix.encode("utf-8")
    match = HEADER_END_RE.search(content)
    head_end = match.start() if match else len(content)
    subject = SUBJECT_RE.search(content, 0, head_end)
    if subject is None:
        return header_line("Subject", prefix) + content
    if content.startswith(encoded, subject.end()):
        return content
    return content[: subject.end()] + encoded + b" " + content[subject.end() :]
