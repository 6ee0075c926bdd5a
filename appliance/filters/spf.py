"""SPF (RFC 7208): may this client send mail for the MAIL FROM domain?

pyspf evaluates the record: it follows include/redirect chains and enforces RFC 7208's
processing limits itself (10 mechanisms that need DNS, 2 void lookups, 10 MX/PTR names),
which turns a loop or an oversized chain into permerror. It blocks while it waits for
DNS, so it runs in a worker thread (appliance.threads), and every lookup it makes goes
through the worker's shared resolver (`Resolver.query_blocking`): one cache and one set
of nameservers for all checks, never pyspf's own reading of /etc/resolv.conf.

For the null sender (bounces) the HELO name is the identity (RFC 7208 2.4). The result is
recorded in `tx.auth.spf` for DMARC and the Authentication-Results header.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
from typing import TYPE_CHECKING, ClassVar

import spf

from appliance.authresults import AuthResult, SPFResult, clean_text
from appliance.config.schema import DOMAIN_RE, SPFSettings
from appliance.context import TransactionContext
from appliance.dmarc import normalize_domain
from appliance.filters.base import Filter
from appliance.threads import run_blocking
from appliance.verdict import Mode, Reply, Stage, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.dns import Resolver

log = logging.getLogger("postwall.filters.spf")

SYMBOL_FOR: dict[AuthResult, str] = {
    AuthResult.PASS: "SPF_PASS",
    AuthResult.FAIL: "SPF_FAIL",
    AuthResult.SOFTFAIL: "SPF_SOFTFAIL",
    AuthResult.NEUTRAL: "SPF_NEUTRAL",
    AuthResult.NONE: "SPF_NONE",
    AuthResult.PERMERROR: "SPF_PERMERROR",
    AuthResult.TEMPERROR: "SPF_TEMPERROR",
}

# -- pyspf's DNS goes through our resolver ----------------------------------------------

_bound = threading.local()  # the resolver of the check running in this thread


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 20) -> list:
    """pyspf's DNS hook (`spf.DNSLookup`): answers in pyspf's format, ((name, type), data)
    pairs; a failure raises spf.TempError, which pyspf turns into temperror."""
    resolver: Resolver | None = getattr(_bound, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver bound to this SPF check")
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        return []  # type SPF (99) is obsolete (RFC 7208 3.1) and never asked by us
    wait = min(max(float(timeout), 0.1), resolver.settings.lifetime + 1)
    try:
        answer = resolver.query_blocking(name, qtype, timeout=wait)
    except (concurrent.futures.TimeoutError, TimeoutError):
        raise spf.TempError(f"DNS timeout for {name} {qtype}") from None
    except RuntimeError as exc:  # the event loop went away (shutdown)
        raise spf.TempError(f"DNS unavailable: {exc}") from None
    if answer.is_failure:
        raise spf.TempError(f"DNS {answer.status.value} for {name} {qtype}")
    key = (name, qtype)
    if qtype == "TXT":
        return [(key, [record.encode("utf-8")]) for record in answer.records]
    if qtype == "MX":
        return [(key, (pref, host)) for pref, host in answer.mx_hosts()]
    return [(key, record) for record in answer.records]


spf.DNSLookup = _lookup  # pyspf's documented hook; its default reads /etc/resolv.conf


# -- the filter -----------------------------------------------------------------------

_PRINTABLE_RE = re.compile(r"[^\x20-\x7e]+")


def spf_domain(identity: str) -> str:
    """The domain part of a MAIL FROM address (or the HELO name itself), lowercased, as
    A-labels (an SMTPUTF8 sender's domain is looked up in its IDNA form)."""
    return normalize_domain(identity.rpartition("@")[2])


def is_checkable_domain(domain: str) -> bool:
    """RFC 7208 4.3: a malformed or single-label domain gives `none` at once."""
    return "." in domain and bool(DOMAIN_RE.match(domain)) and not domain.startswith("[")


def reply_text(text: str) -> str:
    """Text from DNS (an SPF explanation) made safe for one SMTP reply line."""
    return _PRINTABLE_RE.sub(" ", text).strip()[:200]


class SPFFilter(Filter):
    name: ClassVar[str] = "spf"
    stage: ClassVar[Stage] = Stage.MAIL
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("SPF_PASS", -0.5, "SPF pass: the domain authorizes the client", "spf"),
        SymbolSpec("SPF_FAIL", 3.0, "SPF fail: the domain says the client may not send "
                   "for it", "spf"),
        SymbolSpec("SPF_SOFTFAIL", 1.0, "SPF softfail: the domain discourages the client",
                   "spf"),
        SymbolSpec("SPF_NEUTRAL", 0.0, "SPF neutral: the domain makes no assertion", "spf"),
        SymbolSpec("SPF_NONE", 0.0, "No SPF record (or no checkable domain)", "spf"),
        SymbolSpec("SPF_PERMERROR", 0.5, "The domain's SPF record is broken (syntax, loop, "
                   "more than 10 lookups, void lookups)", "spf"),
        SymbolSpec("SPF_TEMPERROR", 0.0, "SPF could not be evaluated: DNS failed or was "
                   "too slow", "spf"),
    )
    waits_on_network: ClassVar[bool] = True

    def setup(self) -> None:
        assert isinstance(self.settings, SPFSettings)
        self.cfg = self.settings
        # pyspf's own budget ends before the pipeline's timer, so slow DNS yields the
        # declared temperror rather than a generic SPF_ERROR.
        self.budget = max(self.timeout - 0.5, self.timeout * 0.8)

    async def check(self, ctx: TransactionContext) -> Verdict:
        conn = ctx.connection
        if ctx.mail_from:
            identity, sender = "mailfrom", ctx.mail_from
        else:
            identity, sender = "helo", (conn.helo or "")
        domain = spf_domain(sender)
        mail_from = ctx.mail_from
        if mail_from and "@" in mail_from:
            mail_from = f"{mail_from.rpartition('@')[0]}@{domain}"
        helo = domain if identity == "helo" else (conn.helo or "")
        result = await self._evaluate(str(conn.peer_ip), mail_from, helo, identity, domain)
        spf_result = SPFResult(result[0], identity, domain, sender or domain, result[1])
        ctx.auth.spf = spf_result
        symbol = SYMBOL_FOR[spf_result.result]
        reason = f"{identity} {domain or '-'}: {spf_result.reason}"
        if (spf_result.result is AuthResult.FAIL and self.cfg.reject_fail
                and self.mode is Mode.BLOCK):
            explanation = reply_text(spf_result.reason) or "not authorized"
            reply = Reply(550, "5.7.23", f"SPF fail for {reply_text(domain)}: {explanation}")
            return self.reject(symbol, reason, reply)
        return self.found(self.hit(symbol, reason))

    async def _evaluate(self, ip: str, mail_from: str, helo: str, identity: str,
                        domain: str) -> tuple[AuthResult, str]:
        if not is_checkable_domain(domain):
            return AuthResult.NONE, f"no checkable {identity} domain"
        resolver = self.services.resolver
        if resolver is None:  # no DNS where none may be asked (unit tests)
            return AuthResult.TEMPERROR, "no DNS resolver"
        resolver.bind_loop()
        return await run_blocking(self._run_pyspf, resolver, ip, mail_from, helo)

    def _run_pyspf(self, resolver: Resolver, ip: str, mail_from: str, helo: str
                   ) -> tuple[AuthResult, str]:
        """In a pool thread: pyspf's evaluation, its DNS bound to `resolver`."""
        _bound.resolver = resolver
        try:
            query = spf.query(
                i=ip, s=mail_from, h=helo, receiver=self.config.smtp.hostname,
                timeout=resolver.settings.lifetime, querytime=self.budget,
            )
            result, _code, explanation = query.check()
        finally:
            _bound.resolver = None
        try:
            outcome = AuthResult(result)
        except ValueError:  # pyspf's non-RFC results ('ambiguous' only in harsh mode)
            outcome = AuthResult.PERMERROR
        return outcome, clean_text(str(explanation or outcome.value))
