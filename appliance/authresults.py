"""What SPF, DKIM and DMARC found for one transaction, and its `Authentication-Results`
header (RFC 8601).

The three checks run at different stages and DMARC needs the other two, so each records
a typed result in `TransactionContext.auth`; `actions.render` turns the whole record into
one header for the delivered copy. Pure: no I/O, no configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

# Longest reason text carried into the header; explanations come from DNS (untrusted).
MAX_REASON = 150


class AuthResult(StrEnum):
    """Result values of RFC 8601 2.7 (each method uses a subset)."""

    PASS = "pass"  # noqa: S105  (an RFC 8601 result, not a password)
    FAIL = "fail"
    SOFTFAIL = "softfail"  # SPF only
    NEUTRAL = "neutral"  # SPF only
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class SPFResult:
    result: AuthResult
    identity: str  # "mailfrom" or "helo": which identity was checked (RFC 7208 2.3/2.4)
    domain: str  # the domain that was checked: MAIL FROM's, or the HELO name
    sender: str  # the checked identity as written: MAIL FROM address or HELO name
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DKIMResult:
    result: AuthResult  # pass, fail, neutral, permerror or temperror
    domain: str  # d=
    selector: str  # s=
    signature_prefix: str = ""  # the start of b= (RFC 6008 header.b), tells signatures apart
    algorithm: str = ""  # a=
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: AuthResult  # pass, fail, none, permerror or temperror
    from_domain: str  # the RFC5322.From domain evaluated
    policy: str = ""  # the published policy that applied (p=, or sp= for a subdomain)
    disposition: str = ""  # what the policy asks after pct sampling: none/quarantine/reject
    reason: str = ""


@dataclass(slots=True)
class AuthResults:
    """Filled in by the SPF (mail stage), DKIM and DMARC (data stage) filters. `None` or
    an empty `dkim` means the check did not run (off, skipped, or it failed)."""

    spf: SPFResult | None = None
    dkim: list[DKIMResult] = field(default_factory=list)
    dkim_checked: bool = False  # True once the DKIM filter looked (no signature: dkim=none)
    dmarc: DMARCResult | None = None

    def dkim_passes(self) -> list[DKIMResult]:
        return [r for r in self.dkim if r.result is AuthResult.PASS]


# -- rendering ------------------------------------------------------------------------

# RFC 2045 token: printable ASCII without tspecials and space.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LOCAL_PART_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def clean_text(text: str, limit: int = MAX_REASON) -> str:
    """One line of header-safe text: control characters become spaces, bounded."""
    return " ".join(_CONTROL_RE.sub(" ", text).split())[:limit]


def quoted(text: str) -> str:
    escaped = clean_text(text, 200).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def value(text: str) -> str:
    """An RFC 2045 `value`: the token itself, or a quoted-string."""
    return text if _TOKEN_RE.fullmatch(text) else quoted(text)


def pvalue(text: str) -> str:
    """RFC 8601 pvalue: an address or domain as written, anything else as a value."""
    local, at, domain = text.rpartition("@")
    if at and _DOMAIN_RE.fullmatch(domain) and (not local or _LOCAL_PART_RE.fullmatch(local)):
        return text
    if not at and _DOMAIN_RE.fullmatch(text):
        return text
    return value(text)


def _reason(text: str) -> str:
    text = clean_text(text)
    return f" reason={quoted(text)}" if text else ""


def _spf_resinfo(spf: SPFResult) -> str:
    ptype = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
    return f"spf={spf.result.value}{_reason(spf.reason)} {ptype}={pvalue(spf.sender)}"


def _dkim_resinfo(dkim: DKIMResult) -> str:
    props = [f"header.d={pvalue(dkim.domain)}"] if dkim.domain else []
    if dkim.selector:
        props.append(f"header.s={value(dkim.selector)}")
    if dkim.algorithm:
        props.append(f"header.a={value(dkim.algorithm)}")
    if dkim.signature_prefix:
        props.append(f"header.b={value(dkim.signature_prefix)}")
    return " ".join([f"dkim={dkim.result.value}{_reason(dkim.reason)}", *props])


def _dmarc_resinfo(dmarc: DMARCResult) -> str:
    comment = ""
    if dmarc.policy:
        comment = f" (p={dmarc.policy} dis={dmarc.disposition or 'none'})"
    prop = f" header.from={pvalue(dmarc.from_domain)}" if dmarc.from_domain else ""
    return f"dmarc={dmarc.result.value}{comment}{_reason(dmarc.reason)}{prop}"


def resinfos(auth: AuthResults) -> list[str]:
    """One `method=result ...` entry per result, in the order the checks ran."""
    items = []
    if auth.spf is not None:
        items.append(_spf_resinfo(auth.spf))
    if auth.dkim:
        items.extend(_dkim_resinfo(r) for r in auth.dkim)
    elif auth.dkim_checked:
        items.append("dkim=none")
    if auth.dmarc is not None:
        items.append(_dmarc_resinfo(auth.dmarc))
    return items


def header_value(authserv_id: str, auth: AuthResults) -> str:
    """The field body of `Authentication-Results:`, one result per folded line; `none`
    when no method ran (RFC 8601 2.2)."""
    items = resinfos(auth)
    if not items:
        return f"{value(authserv_id)}; none"
    return value(authserv_id) + ";\r\n\t" + ";\r\n\t".join(items)


# -- reading ---------------------------------------------------------------------------


def _skip_cfws(text: str, pos: int) -> int:
    """Skip folding white space and (nested) comments."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if depth:
            if char == "\\":
                pos += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        elif char == "(":
            depth = 1
        elif char not in " \t\r\n":
            break
        pos += 1
    return pos


def authserv_id_of(field_body: str) -> str:
    """The authserv-id an `Authentication-Results` field body starts with, lowercased
    (comments skipped, a quoted-string unquoted); "" when there is none."""
    pos = _skip_cfws(field_body, 0)
    if pos < len(field_body) and field_body[pos] == '"':
        end = pos + 1
        out = []
        while end < len(field_body) and field_body[end] != '"':
            if field_body[end] == "\\":
                end += 1
            if end < len(field_body):
                out.append(field_body[end])
            end += 1
        return "".join(out).strip().lower()
    match = _TOKEN_RE.match(field_body, pos)
    return match.group(0).lower() if match else ""
