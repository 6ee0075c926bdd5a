"""Test material for SPF, DKIM and DMARC: RSA keys made with openssl, DKIM signing with
dkimpy, and the zones the tests publish in NSD.

Keys are generated once per test process (`openssl genrsa`, about 0.1 s for 1024 bits).
The "16 kbit key" is a public key only: a 16384-bit modulus with e=65537 built in DER
here. Generating a real 16384-bit key pair takes minutes (`openssl genrsa 16384`: 6 min
of CPU, 12 min on a busy 2-core machine), and the check under test refuses the key by
its size before it is used, so no private half is needed: the message is signed with an
ordinary key and names the 16 kbit selector. (Measured with a real 16 kbit pair: dkimpy
signs in 5.6 s but verifies in 0.02 s, e=65537; an absurd exponent is what costs, and the
filter refuses those too.)
"""

from __future__ import annotations

import base64
import functools
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import nacl.signing

from tests.support.dns_server import txt_record

OPENSSL = "openssl"

# Organizations are separate zones: DMARC's relaxed alignment compares organizational
# domains, and every name under one .test zone shares its organizational domain.
SPF_ZONE = "spf-auth.test"  # SPF records of every kind
SIGNER_ZONE = "dkim-auth.test"  # DKIM keys, SPF pass for 127.0.0.1, no DMARC record
REJECT_ZONE = "dmarc-reject-auth.test"  # p=reject (sp=quarantine for subdomains)
QUARANTINE_ZONE = "dmarc-quarantine-auth.test"  # p=quarantine
MONITOR_ZONE = "dmarc-none-auth.test"  # p=none
PCT0_ZONE = "dmarc-pct0-auth.test"  # p=reject; pct=0
ESP_ZONE = "esp-auth.test"  # a third party: SPF passes, signs with its own d=


@dataclass(frozen=True)
class RSAKey:
    private_pem: bytes  # PKCS#1 PEM, what dkimpy signs with
    public_b64: str  # SubjectPublicKeyInfo DER in base64: the p= of the key record

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"


@dataclass(frozen=True)
class Ed25519Key:
    private_b64: bytes  # the 32-octet seed in base64, what dkimpy signs with
    public_b64: str

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=ed25519; p={self.public_b64}"


@functools.cache
def ed25519_key() -> Ed25519Key:
    signing = nacl.signing.SigningKey.generate()
    return Ed25519Key(base64.b64encode(bytes(signing)),
                      base64.b64encode(bytes(signing.verify_key)).decode())


@functools.cache
def rsa_key(bits: int, label: str = "") -> RSAKey:
    """A fresh RSA key pair (cached per process by size and label)."""
    pem = subprocess.run([OPENSSL, "genrsa", "-traditional", str(bits)], capture_output=True,
                         check=True).stdout
    der = subprocess.run([OPENSSL, "rsa", "-pubout", "-outform", "DER"], input=pem,
                         capture_output=True, check=True).stdout
    return RSAKey(pem, base64.b64encode(der).decode())


# -- DER for public keys that have no private half -------------------------------------


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0: positive
    return _der(0x02, raw)


RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")  # rsaEncryption, NULL


def public_key_record(modulus: int, exponent: int = 65537) -> str:
    """A DKIM key record for an RSA public key given by its numbers."""
    rsa_public = _der(0x30, _der_int(modulus) + _der_int(exponent))
    spki = _der(0x30, RSA_ALGORITHM + _der(0x03, b"\x00" + rsa_public))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def random_modulus(bits: int) -> int:
    """An odd number of exactly `bits` bits: a well-formed (if useless) RSA modulus."""
    return secrets.randbits(bits) | (1 << (bits - 1)) | 1


# -- messages --------------------------------------------------------------------------


def message(
    from_addr: str, subject: str = "auth test", body: str = "Hello,\r\nregards.\r\n",
    *, to: str = "bob@example.com", extra_headers: Sequence[str] = (),
    message_id: str | None = None,
) -> bytes:
    domain = from_addr.rpartition("@")[2]
    mid = message_id or f"<{secrets.token_hex(8)}@{domain}>"
    lines = [f"From: Sender <{from_addr}>", f"To: <{to}>", f"Subject: {subject}",
             "Date: Tue, 24 Nov 2026 10:00:00 +0000", f"Message-ID: {mid}",
             "MIME-Version: 1.0", "Content-Type: text/plain", *extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sign(content: bytes, key: RSAKey | Ed25519Key, domain: str, selector: str = "s1"
         ) -> bytes:
    """`content` with a DKIM-Signature (relaxed/simple, the usual headers) on top."""
    if isinstance(key, Ed25519Key):
        private, algorithm = key.private_b64, b"ed25519-sha256"
    else:
        private, algorithm = key.private_pem, b"rsa-sha256"
    signature = dkim.sign(content, selector.encode(), domain.encode(), private,
                          signature_algorithm=algorithm,
                          include_headers=[b"from", b"to", b"subject", b"date",
                                           b"message-id"])
    return signature + content


# -- zones -----------------------------------------------------------------------------


def txt(name: str, text: str) -> str:
    return f"{name} IN TXT {txt_record(text)}"


def auth_zones() -> dict[str, list[str]]:
    """Every zone the SPF/DKIM/DMARC tests use (publish once per module with set_zones)."""
    signer = rsa_key(1024, "signer")
    small = rsa_key(512, "small")
    own = rsa_key(1024, "own")
    esp = rsa_key(1024, "esp")
    huge = public_key_record(random_modulus(16384))
    big_exponent = public_key_record(random_modulus(2048), exponent=(1 << 2047) + 1)
    spf_zone = [
        txt("pass", "v=spf1 ip4:127.0.0.1 -all"),
        txt("fail", "v=spf1 ip4:192.0.2.1 -all"),
        txt("failexp", "v=spf1 ip4:192.0.2.1 -all exp=explain.spf-auth.test"),
        txt("explain", "Host %{i} may not send mail for %{d}"),
        txt("softfail", "v=spf1 ip4:192.0.2.1 ~all"),
        txt("neutral", "v=spf1 ?all"),
        "nospf IN A 192.0.2.9",
        txt("nospf", "some-verification=abc"),
        txt("chain", "v=spf1 include:chain1.spf-auth.test -all"),
        txt("chain1", "v=spf1 ip4:192.0.2.0/24 include:chain2.spf-auth.test -all"),
        txt("chain2", "v=spf1 ip4:127.0.0.0/8 -all"),
        txt("loopa", "v=spf1 include:loopb.spf-auth.test -all"),
        txt("loopb", "v=spf1 include:loopa.spf-auth.test -all"),
        txt("toomany", "v=spf1 " + " ".join(f"a:h{i}.spf-auth.test" for i in range(1, 12))
            + " ip4:127.0.0.1 -all"),
        *(f"h{i} IN A 192.0.2.{i}" for i in range(1, 12)),
        txt("void", "v=spf1 a:v1.spf-auth.test a:v2.spf-auth.test a:v3.spf-auth.test "
            "ip4:127.0.0.1 -all"),
        txt("syntax", "v=spf1 ip4:127.0.0.1 bogus:mechanism -all"),
        txt("badip", "v=spf1 ip4:999.0.0.1 -all"),
        txt("twice", "v=spf1 ip4:127.0.0.1 -all"),
        txt("twice", "v=spf1 -all"),
        txt("mx", "v=spf1 mx -all"),
        "mx IN MX 10 mailhost.spf-auth.test.",
        "mailhost IN A 127.0.0.1",
        txt("helo", "v=spf1 ip4:127.0.0.1 -all"),
        txt("xn--bcher-kva", "v=spf1 ip4:127.0.0.1 -all"),  # bücher, for SMTPUTF8 senders
        txt("helofail", "v=spf1 -all"),
    ]
    signer_zone = [
        txt("@", "v=spf1 ip4:127.0.0.1 -all"),
        txt("s1._domainkey", signer.record),
        txt("small._domainkey", small.record),
        txt("huge._domainkey", huge),
        txt("bigexp._domainkey", big_exponent),
        txt("revoked._domainkey", "v=DKIM1; k=rsa; p="),
        txt("ed._domainkey", ed25519_key().record),
        txt("edshort._domainkey", "v=DKIM1; k=ed25519; p=AAAA"),
        txt("weird._domainkey", "v=DKIM1; k=dsa; p=AAAA"),
        txt("garbled._domainkey", "v=DKIM1; k=rsa; p=not*base64*at*all"),
    ]

    def policy_zone(policy: str, spf: str) -> list[str]:
        return [txt("_dmarc", policy), txt("@", spf), txt("s1._domainkey", own.record)]

    return {
        SPF_ZONE: spf_zone,
        SIGNER_ZONE: signer_zone,
        REJECT_ZONE: [
            *policy_zone("v=DMARC1; p=reject; sp=quarantine", "v=spf1 ip4:192.0.2.1 -all"),
            txt("pass", "v=spf1 ip4:127.0.0.1 -all"),
            txt("_dmarc.own", "v=DMARC1; p=none"),  # a subdomain with a record of its own
        ],
        QUARANTINE_ZONE: policy_zone("v=DMARC1; p=quarantine", "v=spf1 -all"),
        MONITOR_ZONE: policy_zone("v=DMARC1; p=none; rua=mailto:r@dmarc-none-auth.test",
                                  "v=spf1 -all"),
        PCT0_ZONE: policy_zone("v=DMARC1; p=reject; pct=0", "v=spf1 -all"),
        ESP_ZONE: [txt("@", "v=spf1 ip4:127.0.0.1 -all"), txt("s1._domainkey", esp.record)],
    }


def keys() -> dict[str, RSAKey]:
    """The private keys behind auth_zones(): signer (dkim-auth.test s1), small (512 bits,
    dkim-auth.test small), own (s1 of each DMARC zone), esp (esp-auth.test s1)."""
    return {
        "signer": rsa_key(1024, "signer"),
        "small": rsa_key(512, "small"),
        "own": rsa_key(1024, "own"),
        "esp": rsa_key(1024, "esp"),
    }
