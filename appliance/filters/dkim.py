"""DKIM (RFC 6376): verify the DKIM-Signature fields of inbound mail with dkimpy.

Three steps, so neither DNS nor CPU work holds up the event loop:

1. in a pool thread: dkimpy parses the message and checks each signature's tags (up to
   `max_signatures`, from the top);
2. on the event loop: the selectors' keys are fetched concurrently through the shared
   resolver, and each key is judged before use: RSA keys outside min/max_key_bits (or with
   an absurd exponent), malformed ed25519 keys (RFC 8463) and unknown key types are
   refused with a reason, so a 16 kbit key costs a length check, not a verification;
3. in a pool thread: dkimpy verifies each signature against its key (served from step 2,
   so dkimpy never asks DNS itself).

Each signature's result goes to `tx.auth.dkim` for DMARC and Authentication-Results; the
message scores one symbol: DKIM_VALID if any signature verifies, otherwise DKIM_TEMPERROR
(a key lookup failed, a retry may pass) or DKIM_INVALID, and DKIM_NONE without signatures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import dkim
import dkim.crypto
import dkim.util

from appliance.authresults import AuthResult, DKIMResult, clean_text
from appliance.config.schema import DKIMSettings
from appliance.context import TransactionContext
from appliance.filters.base import Filter
from appliance.threads import run_blocking
from appliance.verdict import Stage, Symbol, SymbolSpec, Verdict

if TYPE_CHECKING:
    from appliance.dns import DNSAnswer

log = logging.getLogger("postwall.filters.dkim")
_dkimpy_log = logging.getLogger("postwall.filters.dkim.dkimpy")

SIGNATURE_FIELD_RE = re.compile(rb"^DKIM-Signature[ \t]*:", re.IGNORECASE | re.MULTILINE)
_WHITESPACE_RE = re.compile(rb"\s+")
# A DNS name of labels with letters, digits, '-' and '_' (selectors may hold dots).
KEY_NAME_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+"
                         r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_EXPONENT_BITS = 64  # real keys use 65537; a huge exponent only burns verifier CPU
SIGNATURE_PREFIX = 12  # characters of b= shown as header.b (RFC 6008 asks for at least 8)


def has_signature(content: bytes) -> bool:
    """True when the header block has a DKIM-Signature field (cheap, on the loop)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    return SIGNATURE_FIELD_RE.search(head) is not None


@dataclass(slots=True)
class Signature:
    """One DKIM-Signature as far as step 1 understood it."""

    index: int
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    prefix: str = ""
    problem: str = ""  # a permerror found before any DNS (bad tags, expired, ...)

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, outcome: AuthResult, reason: str) -> DKIMResult:
        return DKIMResult(outcome, self.domain, self.selector, self.prefix, self.algorithm,
                          clean_text(reason))


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    record: bytes | None  # the key record to verify with, or None with a result
    outcome: AuthResult | None = None
    reason: str = ""
    key_type: str = ""  # "rsa" or "ed25519" for a usable key


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace").strip()


_BYTES_REPR_RE = re.compile(r"""b'([^']*)'""")


def plain(exc: Exception) -> str:
    """dkimpy's message without the b'...' of the bytes it quotes."""
    return _BYTES_REPR_RE.sub(r"\1", str(exc))


def inspect_signatures(content: bytes, limit: int, min_key_bits: int
                       ) -> tuple[dkim.DKIM, list[Signature], int]:
    """Step 1 (pool thread): the parsed message, its first `limit` signatures and how
    many signature fields there are in all."""
    verifier = dkim.DKIM(content, logger=_dkimpy_log, minkey=min_key_bits)
    total = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    signatures = []
    for index in range(min(total, limit)):
        signature = Signature(index)
        try:
            prepared = verifier.verify_headerprep(index)
        except dkim.DKIMException as exc:
            signature.problem = f"bad signature: {plain(exc)}"
            prepared = None
        tags = verifier.signature_fields if prepared else _loose_tags(verifier, index)
        signature.domain = _text(tags.get(b"d")).lower().rstrip(".")
        signature.selector = _text(tags.get(b"s")).lower()
        signature.algorithm = _text(tags.get(b"a"))
        signature.prefix = _WHITESPACE_RE.sub(b"", tags.get(b"b") or b"")[
            :SIGNATURE_PREFIX].decode("ascii", "replace")
        if not signature.problem and not _valid_key_name(signature):
            signature.problem = f"bad d= or s= ({signature.key_name[:100]})"
        signatures.append(signature)
    return verifier, signatures, total


def _loose_tags(verifier: dkim.DKIM, index: int) -> dict[bytes, bytes]:
    """The tags of a signature dkimpy refused, for the report only."""
    fields = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    tags: dict[bytes, bytes] = {}
    for part in fields[index].split(b";"):
        key, sep, value = part.partition(b"=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def _valid_key_name(signature: Signature) -> bool:
    return bool(signature.domain and signature.selector
                and KEY_NAME_RE.fullmatch(signature.key_name))


def judge_key(answer: DNSAnswer, min_bits: int, max_bits: int) -> KeyVerdict:
    """Step 2 (event loop): may this key record be used? Refuses keys outside the size
    limits before parsing anything large."""
    if answer.is_failure:
        return KeyVerdict(None, AuthResult.TEMPERROR,
                          f"key lookup {answer.name}: {answer.status.value}")
    records = [r for r in answer.records if "p=" in r] if answer.ok else []
    if not records:
        return KeyVerdict(None, AuthResult.PERMERROR, f"no key at {answer.name}")
    record = records[0].encode("utf-8", "replace")
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList as exc:
        return KeyVerdict(None, AuthResult.PERMERROR, f"bad key record: {plain(exc)}")
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return KeyVerdict(None, AuthResult.PERMERROR, "key record version is not DKIM1")
    key_data = _WHITESPACE_RE.sub(b"", tags.get(b"p", b""))
    if not key_data:
        return KeyVerdict(None, AuthResult.PERMERROR, "key revoked (empty p=)")
    key_type = tags.get(b"k", b"rsa")
    if key_type == b"ed25519":  # RFC 8463: the raw 32-octet public key
        try:
            raw = base64.b64decode(key_data, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            return KeyVerdict(None, AuthResult.PERMERROR, "unparsable ed25519 key")
        return KeyVerdict(record, key_type="ed25519")
    if key_type != b"rsa":
        return KeyVerdict(None, AuthResult.PERMERROR, f"unknown key type k={_text(key_type)}")
    # Base64 carries 6 bits a character; DER adds well under 100 octets.
    if len(key_data) * 6 > max_bits + 1024:
        return KeyVerdict(None, AuthResult.PERMERROR,
                          f"key of about {len(key_data) * 6 // 1024 * 1024} bits > "
                          f"max_key_bits {max_bits}")
    try:
        key = dkim.crypto.parse_public_key(base64.b64decode(key_data))
    except (binascii.Error, ValueError, dkim.crypto.UnparsableKeyError) as exc:
        return KeyVerdict(None, AuthResult.PERMERROR, f"unparsable RSA key: {plain(exc)}")
    bits = int(key["modulus"]).bit_length()
    exponent = int(key["publicExponent"])
    if bits > max_bits:
        return KeyVerdict(None, AuthResult.PERMERROR, f"key of {bits} bits > max_key_bits "
                          f"{max_bits}")
    if bits < min_bits:
        return KeyVerdict(None, AuthResult.PERMERROR, f"key of {bits} bits < min_key_bits "
                          f"{min_bits}")
    if exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > MAX_EXPONENT_BITS:
        return KeyVerdict(None, AuthResult.PERMERROR, "RSA key with an unusable exponent")
    return KeyVerdict(record, key_type="rsa")


def verify_signatures(verifier: dkim.DKIM, work: list[tuple[Signature, bytes]]
                      ) -> list[DKIMResult]:
    """Step 3 (pool thread): dkimpy's verification, each key served from memory."""
    results = []
    for signature, record in work:
        def served(name: bytes, timeout: float = 5, _record: bytes = record) -> bytes:
            return _record

        try:
            valid = verifier.verify(signature.index, dnsfunc=served)
        except dkim.ValidationError as exc:  # body hash mismatch, ...
            text = plain(exc)
            reason = "body hash mismatch" if text.startswith("body hash") else text
            results.append(signature.result(AuthResult.FAIL, reason))
            continue
        except dkim.DKIMException as exc:
            results.append(signature.result(AuthResult.PERMERROR, plain(exc)))
            continue
        except Exception as exc:  # e.g. PyNaCl on a b= of the wrong length: this
            # signature is broken, the others still count
            results.append(signature.result(AuthResult.PERMERROR,
                                            f"cannot verify: {type(exc).__name__}: {exc}"))
            continue
        if valid:
            results.append(signature.result(AuthResult.PASS, ""))
        else:
            results.append(signature.result(AuthResult.FAIL, "signature did not verify"))
    return results


class DKIMFilter(Filter):
    name: ClassVar[str] = "dkim"
    stage: ClassVar[Stage] = Stage.DATA
    symbols: ClassVar[tuple[SymbolSpec, ...]] = (
        SymbolSpec("DKIM_VALID", -0.5, "A DKIM signature verified (the reason names d=)",
                   "dkim"),
        SymbolSpec("DKIM_INVALID", 1.0, "DKIM signatures present, none verified (changed "
                   "message, missing or refused key, bad signature)", "dkim"),
        SymbolSpec("DKIM_NONE", 0.0, "The message has no DKIM signature", "dkim"),
        SymbolSpec("DKIM_TEMPERROR", 0.0, "A DKIM key could not be fetched (DNS failed); "
                   "none verified", "dkim"),
    )
    waits_on_network: ClassVar[bool] = True

    def setup(self) -> None:
        assert isinstance(self.settings, DKIMSettings)
        self.cfg = self.settings

    async def check(self, ctx: TransactionContext) -> Verdict:
        content = ctx.content
        if content is None:
            return self.found()
        ctx.auth.dkim_checked = True
        if not has_signature(content):
            return self.found(self.hit("DKIM_NONE", "no signature"))
        results, skipped = await self._results(content)
        ctx.auth.dkim = results
        if not results:
            return self.found(self.hit("DKIM_NONE", "no usable signature"))
        return self.found(self._symbol(results, skipped))

    async def _results(self, content: bytes) -> tuple[list[DKIMResult], int]:
        cfg = self.cfg
        verifier, signatures, total = await run_blocking(
            inspect_signatures, content, cfg.max_signatures, cfg.min_key_bits
        )
        keys = await self._keys(sorted({s.key_name for s in signatures if not s.problem}))
        decided: dict[int, DKIMResult] = {}
        work: list[tuple[Signature, bytes]] = []
        for signature in signatures:
            if signature.problem:
                decided[signature.index] = signature.result(AuthResult.PERMERROR,
                                                            signature.problem)
                continue
            verdict = keys[signature.key_name]
            if verdict.record is None:
                assert verdict.outcome is not None
                decided[signature.index] = signature.result(verdict.outcome, verdict.reason)
            elif signature.algorithm.partition("-")[0] != verdict.key_type:
                # RFC 6376 6.1.2: the key must suit a=; dkimpy would use it regardless.
                decided[signature.index] = signature.result(
                    AuthResult.PERMERROR, f"a={signature.algorithm} does not match the "
                    f"{verdict.key_type} key")
            else:
                work.append((signature, verdict.record))
        if work:
            for signature, result in zip(
                [s for s, _ in work], await run_blocking(verify_signatures, verifier, work),
                strict=True,
            ):
                decided[signature.index] = result
        return [decided[i] for i in sorted(decided)], total - len(signatures)

    async def _keys(self, names: list[str]) -> dict[str, KeyVerdict]:
        """Step 2: every selector's key, fetched at once and judged."""
        resolver = self.services.resolver
        if resolver is None:  # no DNS where none may be asked (unit tests)
            return {n: KeyVerdict(None, AuthResult.TEMPERROR, "no DNS resolver") for n in names}
        answers = await asyncio.gather(*(resolver.txt(name) for name in names))
        cfg = self.cfg
        return {name: judge_key(answer, cfg.min_key_bits, cfg.max_key_bits)
                for name, answer in zip(names, answers, strict=True)}

    def _symbol(self, results: list[DKIMResult], skipped: int) -> Symbol:
        more = f" ({skipped} more signatures not checked)" if skipped else ""
        passed = [r for r in results if r.result is AuthResult.PASS]
        if passed:
            domains = ", ".join(dict.fromkeys(f"d={r.domain}" for r in passed))
            return self.hit("DKIM_VALID", domains + more)
        described = "; ".join(f"d={r.domain or '?'} {r.result.value}: {r.reason}"
                              for r in results)
        if any(r.result is AuthResult.TEMPERROR for r in results):
            return self.hit("DKIM_TEMPERROR", described + more)
        return self.hit("DKIM_INVALID", described + more)
