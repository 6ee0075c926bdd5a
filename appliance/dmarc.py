"""DMARC (RFC 7489) without I/O: policy records, organizational domains, identifier
alignment and the evaluation of one From domain against the SPF and DKIM results.

filters/dmarc.py fetches the records and turns an `Evaluation` into symbols.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.utils import getaddresses
from enum import StrEnum
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from appliance.authresults import AuthResult, DKIMResult, SPFResult


class Policy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


POLICY_STEP_DOWN = {Policy.REJECT: Policy.QUARANTINE, Policy.QUARANTINE: Policy.NONE,
                    Policy.NONE: Policy.NONE}


class DMARCRecordError(ValueError):
    """A `_dmarc` TXT record that is not a usable DMARC record."""


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    policy: Policy  # p=
    subdomain_policy: Policy | None = None  # sp=
    percent: int = 100  # pct=
    dkim_strict: bool = False  # adkim=s
    spf_strict: bool = False  # aspf=s


def is_dmarc_record(text: str) -> bool:
    """RFC 7489 6.6.3: records not starting with v=DMARC1 are ignored."""
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", text) is not None


def parse_record(text: str) -> DMARCRecord:
    """Parse a DMARC TXT record (tag=value pairs separated by ';'). Unknown tags are
    ignored; an invalid optional tag takes its default (RFC 7489 6.3)."""
    tags: dict[str, str] = {}
    for index, part in enumerate(text.split(";")):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise DMARCRecordError(f"malformed tag {part[:40]!r}")
        if index == 0 and (name != "v" or value != "DMARC1"):
            raise DMARCRecordError("does not start with v=DMARC1")
        tags.setdefault(name, value)
    if "v" not in tags:
        raise DMARCRecordError("does not start with v=DMARC1")
    policy = _policy(tags.get("p"))
    if policy is None:
        # 6.6.3: without a valid p=, a record with a valid rua= counts as p=none.
        if "rua" not in tags:
            raise DMARCRecordError(f"missing or invalid p= ({tags.get('p', '')[:20]!r})")
        policy = Policy.NONE
    percent = 100
    if re.fullmatch(r"\d{1,3}", tags.get("pct", "")):
        percent = min(int(tags["pct"]), 100)
    return DMARCRecord(
        policy=policy,
        subdomain_policy=_policy(tags.get("sp")),
        percent=percent,
        dkim_strict=tags.get("adkim", "r").lower() == "s",
        spf_strict=tags.get("aspf", "r").lower() == "s",
    )


def _policy(value: str | None) -> Policy | None:
    try:
        return Policy((value or "").lower())
    except ValueError:
        return None


@lru_cache(maxsize=1)
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()  # the copy shipped in the package: no network


def normalize_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return domain


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the registered domain under the public suffix (`mail.example.co.uk`
    -> `example.co.uk`); a public suffix itself is its own organizational domain."""
    domain = normalize_domain(domain)
    return _suffix_list().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, strict: bool) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict needs the same domain, relaxed the same
    organizational domain."""
    identifier, from_domain = normalize_domain(identifier), normalize_domain(from_domain)
    if not identifier or not from_domain:
        return False
    if strict:
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def from_domains(header_values: list[str]) -> list[str]:
    """The distinct domains of the RFC5322.From addresses (several From fields or
    addresses give several), in order; addresses without a domain are skipped."""
    domains = []
    for _name, address in getaddresses(header_values):
        domain = normalize_domain(address.rpartition("@")[2]) if "@" in address else ""
        if domain and domain not in domains:
            domains.append(domain)
    return domains


def sampled(percent: int, key: str) -> bool:
    """pct= sampling, deterministic for one message (the same message always gets the
    same answer, on every worker and on a retry)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return int(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8], 16) % 100 < percent


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The DMARC outcome for one From domain. `disposition` is what the policy asks for
    after pct sampling (None for pass, none, temperror)."""

    result: AuthResult  # pass, fail, none, temperror, permerror
    from_domain: str
    policy: Policy | None = None
    disposition: Policy | None = None
    reason: str = ""


def evaluate(
    record: DMARCRecord, from_domain: str, policy_domain: str, spf: SPFResult | None,
    dkim: list[DKIMResult], sample_key: str,
) -> Evaluation:
    """Evaluate `from_domain` whose record was found at `policy_domain` (the From domain
    itself, or its organizational domain)."""
    if spf is not None and spf.result is AuthResult.PASS and aligned(
        spf.domain, from_domain, record.spf_strict
    ):
        return Evaluation(AuthResult.PASS, from_domain, _applied(record, from_domain,
                          policy_domain), reason=f"SPF aligned ({spf.domain})")
    for result in dkim:
        if result.result is AuthResult.PASS and aligned(result.domain, from_domain,
                                                        record.dkim_strict):
            return Evaluation(AuthResult.PASS, from_domain, _applied(record, from_domain,
                              policy_domain), reason=f"DKIM aligned (d={result.domain})")
    policy = _applied(record, from_domain, policy_domain)
    why = _failure_reason(record, from_domain, spf, dkim)
    transient = (spf is not None and spf.result is AuthResult.TEMPERROR) or any(
        r.result is AuthResult.TEMPERROR for r in dkim
    )
    if transient and policy is not Policy.NONE:
        # A DNS hiccup must not turn into a reject: the sender retries after a 4xx later.
        return Evaluation(AuthResult.TEMPERROR, from_domain, policy,
                          reason=f"{why}; SPF or DKIM had a temporary error")
    disposition = policy
    if not sampled(record.percent, f"{sample_key}/{from_domain}"):
        disposition = POLICY_STEP_DOWN[policy]
        why += f"; pct={record.percent} not sampled"
    return Evaluation(AuthResult.FAIL, from_domain, policy, disposition, why)


def _applied(record: DMARCRecord, from_domain: str, policy_domain: str) -> Policy:
    """sp= applies when the record was found at the organizational domain for a
    subdomain (RFC 7489 6.6.3)."""
    if normalize_domain(from_domain) != normalize_domain(policy_domain):
        return record.subdomain_policy or record.policy
    return record.policy


def _failure_reason(record: DMARCRecord, from_domain: str, spf: SPFResult | None,
                    dkim: list[DKIMResult]) -> str:
    parts = []
    if spf is None:
        parts.append("no SPF result")
    elif spf.result is not AuthResult.PASS:
        parts.append(f"SPF {spf.result.value}")
    else:
        mode = "strictly " if record.spf_strict else ""
        parts.append(f"SPF domain {spf.domain} not {mode}aligned")
    passes = [r for r in dkim if r.result is AuthResult.PASS]
    if not dkim:
        parts.append("no DKIM signature")
    elif not passes:
        parts.append("no valid DKIM signature")
    else:
        mode = "strictly " if record.dkim_strict else ""
        domains = ",".join(sorted({r.domain for r in passes}))
        parts.append(f"DKIM d={domains} not {mode}aligned")
    return f"{from_domain}: " + ", ".join(parts)
