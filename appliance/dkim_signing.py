"""DKIM signing (RFC 6376, dkimpy) of outgoing mail on the relay listener, over the exact
octets relayed downstream.

The signing domain is the From domain, or the nearest parent domain we sign for (relaxed
DMARC alignment), else the envelope sender's. Keys are read from <data_dir>/dkim (see
appliance/dkim_keys.py) and cached while their files do not change, so a rotation by
`postwall dkim rotate` takes effect with the next message, without a reload. A missing
or unreadable key is logged with the file and the message goes out unsigned, or gets
451 when `on_key_error: tempfail` (the internal server retries: nothing is lost)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import dkim

from appliance import dkim_keys, mime
from appliance.config.schema import Config
from appliance.context import TransactionContext
from appliance.dkim_keys import DKIMKeyError, SigningKey
from appliance.verdict import Symbol

log = logging.getLogger("postwall.dkim_signing")

# Signing a large message (body canonicalisation and hash) runs in a pool thread so the
# other sessions of the worker are not held up.
THREAD_BYTES = 256 * 1024
OVERSIGNED = (b"from", b"subject")


class _OpenSSLRSA(dkim.DKIM):
    """dkimpy's signer with the RSA operation done by OpenSSL (`cryptography`): dkimpy's
    own modular exponentiation is pure Python, 10-20 ms per 2048-bit signature holding
    the GIL (every session of the worker waits); OpenSSL takes about a millisecond.
    `gen_header` follows dkimpy 1.1's (pinned <2); the tests verify its output."""

    def __init__(self, message: bytes, rsa_key: Any) -> None:
        super().__init__(message, linesep=b"\r\n")
        self.rsa_key = rsa_key

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk,  # type: ignore[no-untyped-def]
                   standardize=False):
        if standardize or self.signature_algorithm != b"rsa-sha256":
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk,
                                      standardize)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        hasher = dkim.HashThrough(self.hasher(), self.debug_content)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            hasher, canon_policy, headers, include_headers, (header_name, b" " + header_value),
            dict(fields),
        )
        signature = self.rsa_key.sign(
            hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
        index = next(i for i, (name, _) in enumerate(fields) if name == b"b")
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)


class DKIMSigner:
    def __init__(self, config: Config) -> None:
        self.configure(config)
        self._cache: dict[str, tuple[tuple[int, int, int, int], SigningKey]] = {}
        self._rsa: dict[Path, tuple[SigningKey, Any]] = {}
        self.signed = 0
        self.seconds = 0.0

    def configure(self, config: Config) -> None:
        self.settings = config.dkim_signing
        self.data_dir = Path(config.data_dir)
        self.headers = tuple(h.encode("ascii") for h in self.settings.headers)

    # -- which domain --------------------------------------------------------------------

    def signing_domain(self, tx: TransactionContext, content: bytes) -> str | None:
        listed = self.settings.domains
        candidates = []
        try:
            headers = mime.parse_headers(content)
            for _, address in getaddresses(headers.get_all("From") or []):
                if "@" in address:
                    candidates.append(address.rpartition("@")[2])
                    break
        except Exception:  # an unparsable From must not stop the mail
            log.debug("tx=%s no usable From header to sign for", tx.id)
        if tx.mail_from:
            candidates.append(tx.sender_domain)
        for domain in candidates:
            labels = domain.lower().rstrip(".").split(".")
            for i in range(len(labels) - 1):
                name = ".".join(labels[i:])
                if listed:
                    if name in listed:
                        return name
                elif (self.data_dir / "dkim" / name / dkim_keys.ACTIVE_FILE).is_file():
                    return name
        return None

    # -- keys --------------------------------------------------------------------------

    def key_for(self, domain: str) -> SigningKey:
        directory = dkim_keys.domain_dir(self.data_dir, domain)
        try:
            active = os.stat(directory / dkim_keys.ACTIVE_FILE)
        except FileNotFoundError:
            raise DKIMKeyError(f"{domain} has no active DKIM key (postwall dkim generate "
                               f"{domain})") from None
        cached = self._cache.get(domain)
        if cached is not None:
            try:
                key_stat = os.stat(cached[1].path)
            except OSError:
                key_stat = None
            if key_stat is not None and cached[0] == (
                active.st_mtime_ns, active.st_ino, key_stat.st_mtime_ns, key_stat.st_ino
            ):
                return cached[1]
        key = dkim_keys.load_active(self.data_dir, domain)
        key_stat = os.stat(key.path)
        stamp = (active.st_mtime_ns, active.st_ino, key_stat.st_mtime_ns, key_stat.st_ino)
        self._cache[domain] = (stamp, key)
        return key

    # -- signing -----------------------------------------------------------------------

    async def sign(self, tx: TransactionContext, content: bytes) -> bytes | None:
        """`content` with a DKIM-Signature on top; `content` unchanged when signing is
        off or no domain applies; None when the key is unusable and the setting says
        tempfail."""
        if not self.settings.enabled:
            return content
        domain = self.signing_domain(tx, content)
        if domain is None:
            return content
        try:
            key = self.key_for(domain)
        except DKIMKeyError as exc:
            return self._key_failed(tx, domain, str(exc), content)
        started = time.perf_counter()
        try:
            if len(content) > THREAD_BYTES:
                header = await asyncio.to_thread(self._signature, key, content)
            else:
                header = self._signature(key, content)
        except (dkim.DKIMException, ValueError) as exc:
            self._cache.pop(domain, None)
            return self._key_failed(tx, domain, f"{key.path}: {exc}", content)
        self.seconds += time.perf_counter() - started
        self.signed += 1
        tx.symbols.append(Symbol("DKIM_SIGNED", 0.0, f"d={domain} s={key.selector}"))
        return header + content

    def _signature(self, key: SigningKey, content: bytes) -> bytes:
        signer = (_OpenSSLRSA(content, self._rsa_key(key)) if key.algorithm == "rsa"
                  else dkim.DKIM(content, linesep=b"\r\n"))
        present = [name.lower() for name, _ in signer.headers]
        include = [name for name in present if name in self.headers]
        include += [name for name in OVERSIGNED if name in self.headers]
        return signer.sign(
            key.selector.encode("ascii"), key.domain.encode("ascii"), key.private,
            signature_algorithm=key.signature_algorithm,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )

    def _rsa_key(self, key: SigningKey) -> Any:
        cached = self._rsa.get(key.path)
        if cached is None or cached[0] is not key:
            from cryptography.hazmat.primitives import serialization

            cached = (key, serialization.load_pem_private_key(key.private, password=None))
            self._rsa[key.path] = cached
        return cached[1]

    def _key_failed(
        self, tx: TransactionContext, domain: str, reason: str, content: bytes
    ) -> bytes | None:
        tempfail = self.settings.on_key_error == "tempfail"
        log.error("tx=%s DKIM signing for %s impossible: %s; %s", tx.id, domain, reason,
                  "answering 451 (on_key_error: tempfail)" if tempfail else "sent unsigned")
        tx.symbols.append(Symbol("DKIM_SIGN_ERROR", 0.0, reason[:200]))
        return None if tempfail else content
