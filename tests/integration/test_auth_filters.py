"""The SPF, DKIM and DMARC filters with the shared resolver against the real NSD (and a
broken DNS server): every record kind, RFC 7208 limits, key limits, policy discovery."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import pytest

from appliance.authresults import AuthResult, DKIMResult, SPFResult
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.dns import Resolver
from appliance.filters.base import Filter
from appliance.filters.dkim import DKIMFilter
from appliance.filters.dmarc import DMARCFilter
from appliance.filters.registry import declared_symbols, settings_for
from appliance.filters.spf import SPFFilter
from appliance.pipeline import Pipeline
from appliance.services import Services
from appliance.verdict import Decision, Stage, Verdict
from tests.support import mailauth
from tests.support.dns_server import AuthoritativeDNS, BrokenDNS
from tests.support.mailauth import (
    ESP_ZONE,
    MONITOR_ZONE,
    PCT0_ZONE,
    QUARANTINE_ZONE,
    REJECT_ZONE,
    SIGNER_ZONE,
    SPF_ZONE,
    message,
    sign,
)

F = TypeVar("F", bound=Filter)


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> Iterator[AuthoritativeDNS]:
    dns_server.set_zones(mailauth.auth_zones())
    yield dns_server


def build(cls: type[F], server: AuthoritativeDNS | BrokenDNS | None, *,
          dns: dict[str, Any] | None = None, **settings: Any) -> F:
    config = Config.model_validate({
        "smtp": {"hostname": "mx.postwall.test"},
        "dns": {"nameservers": [server.nameserver] if server else [], **(dns or {})},
        "filters": {cls.name: {"mode": "block", **settings}},
    })
    resolver = Resolver(config.dns) if server is not None else None
    return cls(settings_for(cls, config), {}, config, Services(resolver=resolver))


def transaction(sender: str = "", helo: str = "client.example.net", ip: str = "127.0.0.1",
                content: bytes | None = None) -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address(ip), 40000, Listener.INBOUND, helo=helo)
    return TransactionContext(connection=conn, mail_from=sender, rcpt_tos=["b@example.com"],
                              content=content)


def names(verdict: Verdict) -> list[str]:
    symbols = list(verdict.symbols)
    if verdict.final is not None:
        symbols.append(verdict.final.symbol)
    return [s.name for s in symbols]


# -- SPF --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "result", "reason"),
    [
        ("pass", AuthResult.PASS, "authorized"),
        ("fail", AuthResult.FAIL, "not authorized"),
        ("softfail", AuthResult.SOFTFAIL, "discourages"),
        ("neutral", AuthResult.NEUTRAL, "neither permitted"),
        ("nospf", AuthResult.NONE, "none"),
        ("missing", AuthResult.NONE, "none"),  # NXDOMAIN
        ("chain", AuthResult.PASS, "authorized"),  # include -> include -> ip4:127/8
        ("mx", AuthResult.PASS, "authorized"),  # mx -> MX -> A through our resolver
        ("loopa", AuthResult.PERMERROR, "DNS lookups"),  # a includes b includes a
        ("toomany", AuthResult.PERMERROR, "Too many DNS lookups"),  # 11 a: mechanisms
        ("void", AuthResult.PERMERROR, "Void lookup limit"),  # 3 names that do not exist
        ("syntax", AuthResult.PERMERROR, "Unknown mechanism"),
        ("badip", AuthResult.PERMERROR, "Invalid IP4"),
        ("twice", AuthResult.PERMERROR, "Two or more"),
    ],
)
async def test_spf_results(zones: AuthoritativeDNS, domain: str, result: AuthResult,
                           reason: str) -> None:
    flt = build(SPFFilter, zones)
    tx = transaction(f"bounce@{domain}.{SPF_ZONE}")
    verdict = await flt.check(tx)
    spf = tx.auth.spf
    assert spf is not None and spf.result is result, spf
    assert reason.lower() in spf.reason.lower(), spf.reason
    assert (spf.identity, spf.domain) == ("mailfrom", f"{domain}.{SPF_ZONE}")
    expected = f"SPF_{result.value.upper()}"
    assert names(verdict) == [expected]
    assert verdict.final is None  # block mode, but reject_fail is off


async def test_spf_null_sender_checks_the_helo_name(zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones)
    tx = transaction("", helo=f"helo.{SPF_ZONE}")
    assert names(await flt.check(tx)) == ["SPF_PASS"]
    assert tx.auth.spf == SPFResult(AuthResult.PASS, "helo", f"helo.{SPF_ZONE}",
                                    f"helo.{SPF_ZONE}", tx.auth.spf.reason)
    tx = transaction("", helo=f"helofail.{SPF_ZONE}")
    assert names(await flt.check(tx)) == ["SPF_FAIL"]
    # An address literal or a bare word cannot be checked: none, without any lookup.
    for helo in ("[127.0.0.1]", "localhost"):
        tx = transaction("", helo=helo)
        assert names(await flt.check(tx)) == ["SPF_NONE"]
        assert "no checkable helo domain" in tx.auth.spf.reason


async def test_spf_smtputf8_sender_domain_is_looked_up_as_a_labels(
        zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones)
    tx = transaction(f"info@Bücher.{SPF_ZONE}")
    assert names(await flt.check(tx)) == ["SPF_PASS"]
    assert tx.auth.spf.domain == f"xn--bcher-kva.{SPF_ZONE}"
    assert tx.auth.spf.sender == f"info@Bücher.{SPF_ZONE}"


async def test_spf_client_address_matters(zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones)
    tx = transaction(f"x@pass.{SPF_ZONE}", ip="192.0.2.77")
    assert names(await flt.check(tx)) == ["SPF_FAIL"]


async def test_spf_fail_rejected_with_5723_and_explanation(zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones, reject_fail=True)
    verdict = await flt.check(transaction(f"x@failexp.{SPF_ZONE}"))
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    reply = verdict.final.reply
    assert (reply.code, reply.enhanced) == (550, "5.7.23")
    assert reply.text == (f"SPF fail for failexp.{SPF_ZONE}: Host 127.0.0.1 may not send "
                          f"mail for failexp.{SPF_ZONE}")
    # Softfail is never refused.
    assert (await flt.check(transaction(f"x@softfail.{SPF_ZONE}"))).final is None


async def test_spf_lookups_go_through_the_shared_cache(zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones)
    resolver = flt.services.resolver
    assert resolver is not None
    await flt.check(transaction(f"x@chain.{SPF_ZONE}"))
    cached = resolver.cached_entries()
    assert cached >= 3  # chain, chain1, chain2 TXT
    started = time.monotonic()
    await flt.check(transaction(f"y@chain.{SPF_ZONE}"))
    assert resolver.cached_entries() == cached
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("behaviour", ["silent", "servfail", "garbage"])
async def test_spf_dead_dns_is_temperror_within_the_timeout(behaviour: str) -> None:
    with BrokenDNS(behaviour) as broken:
        flt = build(SPFFilter, broken, dns={"timeout": 0.5, "lifetime": 1.0}, timeout=3)
        pipeline = Pipeline([flt], declared_symbols())
        tx = transaction(f"x@pass.{SPF_ZONE}")
        started = time.monotonic()
        result = await pipeline.run(Stage.MAIL, tx)
        elapsed = time.monotonic() - started
    assert result.final is None
    assert [s.name for s in tx.symbols] == ["SPF_TEMPERROR"]
    assert tx.auth.spf is not None and tx.auth.spf.result is AuthResult.TEMPERROR
    assert elapsed < 3.0


async def test_spf_without_resolver_is_temperror() -> None:
    flt = build(SPFFilter, None)
    tx = transaction(f"x@pass.{SPF_ZONE}")
    assert names(await flt.check(tx)) == ["SPF_TEMPERROR"]


# -- DKIM -------------------------------------------------------------------------------


def signed(selector: str = "s1", key: str = "signer", domain: str = SIGNER_ZONE,
           from_addr: str = f"news@{SIGNER_ZONE}") -> bytes:
    return sign(message(from_addr), mailauth.keys()[key], domain, selector)


async def dkim_check(zones: AuthoritativeDNS | BrokenDNS, content: bytes, **settings: Any
                     ) -> tuple[list[str], list[DKIMResult], Verdict]:
    flt = build(DKIMFilter, zones, **settings)
    tx = transaction(content=content)
    verdict = await flt.check(tx)
    return names(verdict), tx.auth.dkim, verdict


async def test_dkim_valid_signature(zones: AuthoritativeDNS) -> None:
    found, results, verdict = await dkim_check(zones, signed())
    assert found == ["DKIM_VALID"]
    assert verdict.symbols[0].reason == f"d={SIGNER_ZONE}"
    [result] = results
    assert (result.result, result.domain, result.selector) == (AuthResult.PASS, SIGNER_ZONE,
                                                               "s1")
    assert len(result.signature_prefix) == 12


async def test_dkim_tampered_body_and_header_fail(zones: AuthoritativeDNS) -> None:
    content = signed()
    found, results, _ = await dkim_check(zones, content.replace(b"regards", b"REGARDS"))
    assert found == ["DKIM_INVALID"]
    assert (results[0].result, results[0].reason) == (AuthResult.FAIL, "body hash mismatch")
    found, results, _ = await dkim_check(zones, content.replace(b"auth test", b"auth t3st"))
    assert found == ["DKIM_INVALID"]
    assert (results[0].result, results[0].reason) == (AuthResult.FAIL,
                                                      "signature did not verify")


async def test_dkim_no_signature(zones: AuthoritativeDNS) -> None:
    flt = build(DKIMFilter, zones)
    tx = transaction(content=message(f"a@{SIGNER_ZONE}"))
    assert names(await flt.check(tx)) == ["DKIM_NONE"]
    assert tx.auth.dkim_checked and tx.auth.dkim == []


@pytest.mark.parametrize(
    ("selector", "key", "reason"),
    [
        ("missing", "signer", f"no key at missing._domainkey.{SIGNER_ZONE}"),
        ("revoked", "signer", "key revoked"),
        ("small", "small", "key of 512 bits < min_key_bits 1024"),
        ("huge", "signer", "key of about 16384 bits > max_key_bits 8192"),
        ("bigexp", "signer", "unusable exponent"),
        ("garbled", "signer", "unparsable RSA key"),
    ],
)
async def test_dkim_refused_keys_say_why(zones: AuthoritativeDNS, selector: str, key: str,
                                         reason: str) -> None:
    started = time.monotonic()
    found, results, verdict = await dkim_check(zones, signed(selector, key))
    assert time.monotonic() - started < 2.0
    assert found == ["DKIM_INVALID"]
    [result] = results
    assert result.result is AuthResult.PERMERROR
    assert reason in result.reason, result.reason
    assert reason in verdict.symbols[0].reason


async def test_dkim_16kbit_key_allowed_by_settings_costs_no_time(
        zones: AuthoritativeDNS) -> None:
    # With the limit raised, the (random) 16384-bit key is used: it cannot verify a
    # signature made with another key, and the RSA operation with e=65537 is quick.
    started = time.monotonic()
    found, results, _ = await dkim_check(zones, signed("huge"), max_key_bits=16384)
    assert time.monotonic() - started < 1.0
    assert found == ["DKIM_INVALID"]
    assert (results[0].result, results[0].reason) == (AuthResult.FAIL,
                                                      "signature did not verify")


async def test_dkim_ed25519(zones: AuthoritativeDNS) -> None:
    content = sign(message(f"a@{SIGNER_ZONE}"), mailauth.ed25519_key(), SIGNER_ZONE, "ed")
    assert b"a=ed25519-sha256" in content
    found, results, _ = await dkim_check(zones, content)
    assert found == ["DKIM_VALID"]
    assert (results[0].result, results[0].algorithm) == (AuthResult.PASS, "ed25519-sha256")
    found, results, _ = await dkim_check(zones, content.replace(b"auth test", b"auth t3st"))
    assert found == ["DKIM_INVALID"] and results[0].result is AuthResult.FAIL
    # An RSA signature pointing at the ed25519 key, and malformed keys.
    found, results, _ = await dkim_check(zones, signed("ed"))
    assert found == ["DKIM_INVALID"]
    assert (results[0].result, results[0].reason) == (
        AuthResult.PERMERROR, "a=rsa-sha256 does not match the ed25519 key")
    for selector, reason in (("edshort", "unparsable ed25519 key"),
                             ("weird", "unknown key type k=dsa")):
        found, results, _ = await dkim_check(zones, signed(selector))
        assert found == ["DKIM_INVALID"]
        assert (results[0].result, results[0].reason) == (AuthResult.PERMERROR, reason)


async def test_dkim_malformed_signature_fields(zones: AuthoritativeDNS) -> None:
    content = message(f"a@{SIGNER_ZONE}")
    cases = {
        b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test\r\n": "bad signature: missing b=",
        b"DKIM-Signature: garbage without tags\r\n": "bad signature: garbage without tags",
        b"DKIM-Signature: v=1; a=rsa-sha256; b=AAAA; bh=AAAA; d=a..b; h=from; s=s1\r\n":
            "bad d= or s=",
    }
    for header, reason in cases.items():
        found, results, _ = await dkim_check(zones, header + content)
        assert found == ["DKIM_INVALID"], header
        assert results[0].result is AuthResult.PERMERROR and reason in results[0].reason


async def test_dkim_one_valid_signature_is_enough(zones: AuthoritativeDNS) -> None:
    keys = mailauth.keys()
    content = sign(sign(message(f"a@{SIGNER_ZONE}"), keys["esp"], ESP_ZONE),
                   keys["signer"], SIGNER_ZONE, "small")  # top signature: refused key
    found, results, verdict = await dkim_check(zones, content)
    assert found == ["DKIM_VALID"] and verdict.symbols[0].reason == f"d={ESP_ZONE}"
    assert [r.result for r in results] == [AuthResult.PERMERROR, AuthResult.PASS]


async def test_dkim_signature_cap(zones: AuthoritativeDNS) -> None:
    content = signed()
    for _ in range(7):
        content = b"DKIM-Signature: v=1; d=x.test; s=s1\r\n" + content
    found, results, verdict = await dkim_check(zones, content, max_signatures=3)
    assert found == ["DKIM_INVALID"] and len(results) == 3
    assert "(5 more signatures not checked)" in verdict.symbols[0].reason


async def test_dkim_dead_dns_is_temperror() -> None:
    with BrokenDNS("silent") as broken:
        started = time.monotonic()
        found, results, _ = await dkim_check(broken, signed(), timeout=3,
                                             dns={"timeout": 0.5, "lifetime": 1.0})
        elapsed = time.monotonic() - started
    assert found == ["DKIM_TEMPERROR"]
    assert results[0].result is AuthResult.TEMPERROR and "timeout" in results[0].reason
    assert elapsed < 3.0


# -- DMARC ------------------------------------------------------------------------------


async def dmarc_check(zones: AuthoritativeDNS | BrokenDNS, content: bytes, *,
                      spf: SPFResult | None = None, dkim: Sequence[DKIMResult] = (),
                      **settings: Any) -> tuple[TransactionContext, Verdict]:
    flt = build(DMARCFilter, zones, **settings)
    tx = transaction(content=content)
    tx.auth.spf = spf
    tx.auth.dkim = list(dkim)
    return tx, await flt.check(tx)


def spf_pass(domain: str) -> SPFResult:
    return SPFResult(AuthResult.PASS, "mailfrom", domain, f"b@{domain}")


def dkim_pass(domain: str) -> DKIMResult:
    return DKIMResult(AuthResult.PASS, domain, "s1")


async def test_dmarc_reject_policy_rejects_in_block_mode(zones: AuthoritativeDNS) -> None:
    tx, verdict = await dmarc_check(zones, message(f"ceo@{REJECT_ZONE}"),
                                    spf=spf_pass(ESP_ZONE), dkim=[dkim_pass(ESP_ZONE)])
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert str(verdict.final.reply) == (f"550 5.7.1 Message rejected by the DMARC policy of "
                                        f"{REJECT_ZONE} (p=reject)")
    assert names(verdict) == ["DMARC_FAIL_REJECT"]
    assert tx.auth.dmarc is not None and tx.auth.dmarc.result is AuthResult.FAIL
    assert (tx.auth.dmarc.policy, tx.auth.dmarc.disposition) == ("reject", "reject")
    # honor_reject off: only the symbol.
    _, verdict = await dmarc_check(zones, message(f"ceo@{REJECT_ZONE}"), honor_reject=False)
    assert verdict.final is None and names(verdict) == ["DMARC_FAIL_REJECT"]


async def test_dmarc_pass_by_aligned_dkim_or_spf(zones: AuthoritativeDNS) -> None:
    tx, verdict = await dmarc_check(zones, message(f"ceo@{REJECT_ZONE}"),
                                    dkim=[dkim_pass(f"mail.{REJECT_ZONE}")])
    assert names(verdict) == ["DMARC_PASS"] and tx.auth.dmarc.result is AuthResult.PASS
    _, verdict = await dmarc_check(zones, message(f"ceo@{REJECT_ZONE}"),
                                   spf=spf_pass(f"pass.{REJECT_ZONE}"))
    assert names(verdict) == ["DMARC_PASS"]


@pytest.mark.parametrize(
    ("from_domain", "symbol", "policy", "disposition"),
    [
        (QUARANTINE_ZONE, "DMARC_FAIL_QUARANTINE", "quarantine", "quarantine"),
        (MONITOR_ZONE, "DMARC_FAIL_NONE", "none", "none"),
        (PCT0_ZONE, "DMARC_FAIL_QUARANTINE", "reject", "quarantine"),  # pct=0: one step down
        (f"news.{REJECT_ZONE}", "DMARC_FAIL_QUARANTINE", "quarantine", "quarantine"),  # sp=
        (f"own.{REJECT_ZONE}", "DMARC_FAIL_NONE", "none", "none"),  # its own record wins
        (f"a.b.{MONITOR_ZONE}", "DMARC_FAIL_NONE", "none", "none"),  # org fallback
        (SIGNER_ZONE, "DMARC_NONE", "", ""),  # no record anywhere
        (f"nothing.{SPF_ZONE}", "DMARC_NONE", "", ""),
    ],
)
async def test_dmarc_policies(zones: AuthoritativeDNS, from_domain: str, symbol: str,
                              policy: str, disposition: str) -> None:
    tx, verdict = await dmarc_check(zones, message(f"x@{from_domain}"),
                                    spf=spf_pass(ESP_ZONE))
    assert names(verdict) == [symbol]
    assert verdict.final is None
    dmarc = tx.auth.dmarc
    assert dmarc is not None and (dmarc.policy, dmarc.disposition) == (policy, disposition)
    assert dmarc.from_domain == from_domain


async def test_dmarc_several_from_domains_take_the_strictest(zones: AuthoritativeDNS) -> None:
    content = message(f"a@{MONITOR_ZONE}").replace(
        b"From: Sender <", f"From: x@{REJECT_ZONE}, Sender <".encode())
    tx, verdict = await dmarc_check(zones, content, honor_reject=False)
    assert names(verdict) == ["DMARC_FAIL_REJECT"]
    assert verdict.symbols[0].reason.startswith("2 From domains, strictest:")
    assert tx.auth.dmarc.from_domain == REJECT_ZONE


async def test_dmarc_without_from_domain(zones: AuthoritativeDNS) -> None:
    content = message("a@x.test").replace(b"From: Sender <a@x.test>\r\n", b"")
    tx, verdict = await dmarc_check(zones, content)
    assert names(verdict) == ["DMARC_NONE"]
    assert tx.auth.dmarc is not None and tx.auth.dmarc.result is AuthResult.PERMERROR


async def test_dmarc_invalid_from_domain_is_not_looked_up(zones: AuthoritativeDNS) -> None:
    content = message("a@x.test").replace(b"From: Sender <a@x.test>",
                                          b"From: Sender <a@[192.0.2.1]>")
    flt = build(DMARCFilter, zones)
    tx = transaction(content=content)
    verdict = await flt.check(tx)
    assert names(verdict) == ["DMARC_NONE"]
    assert "invalid From domain '[192.0.2.1]'" in verdict.symbols[0].reason
    assert tx.auth.dmarc.result is AuthResult.PERMERROR
    resolver = flt.services.resolver
    assert resolver is not None and resolver.cached_entries() == 0  # nothing was asked
    await flt.check(transaction(content=message(f"a@{MONITOR_ZONE}")))
    assert resolver.cached_entries() == 1  # (the same filter does ask for a valid one)


async def test_dmarc_temporary_failures(zones: AuthoritativeDNS) -> None:
    # SPF had a DNS failure: the reject domain's policy is not applied.
    tx, verdict = await dmarc_check(
        zones, message(f"a@{REJECT_ZONE}"),
        spf=SPFResult(AuthResult.TEMPERROR, "mailfrom", REJECT_ZONE, f"a@{REJECT_ZONE}"))
    assert names(verdict) == ["DMARC_TEMPERROR"] and verdict.final is None
    with BrokenDNS("servfail") as broken:
        tx, verdict = await dmarc_check(broken, message(f"a@{REJECT_ZONE}"))
    assert names(verdict) == ["DMARC_TEMPERROR"]
    assert tx.auth.dmarc.result is AuthResult.TEMPERROR and "servfail" in tx.auth.dmarc.reason


async def test_spf_dkim_dmarc_together_through_the_pipeline(zones: AuthoritativeDNS) -> None:
    """What DMARC reads is what SPF and DKIM wrote, stage after stage."""
    filters = [build(cls, zones, honor_reject=True) if cls is DMARCFilter else build(cls, zones)
               for cls in (SPFFilter, DKIMFilter, DMARCFilter)]
    pipeline = Pipeline(filters, declared_symbols())
    keys = mailauth.keys()
    content = sign(message(f"ceo@{REJECT_ZONE}"), keys["own"], REJECT_ZONE)
    tx = transaction(f"bounce@{ESP_ZONE}", content=content)
    await pipeline.run(Stage.MAIL, tx)
    await pipeline.run(Stage.DATA, tx)
    assert [s.name for s in tx.symbols] == ["SPF_PASS", "DKIM_VALID", "DMARC_PASS"]
    assert "DKIM aligned" in tx.auth.dmarc.reason
    # The same message changed in transit: DKIM fails, SPF passes for the ESP only.
    tx = transaction(f"bounce@{ESP_ZONE}", content=content.replace(b"Hello", b"Hullo"))
    await pipeline.run(Stage.MAIL, tx)
    result = await pipeline.run(Stage.DATA, tx)
    assert [s.name for s in tx.symbols] == ["SPF_PASS", "DKIM_INVALID", "DMARC_FAIL_REJECT"]
    assert result.final is not None and result.final.reply.code == 550


async def test_concurrent_checks_share_the_thread_pool(zones: AuthoritativeDNS) -> None:
    flt = build(SPFFilter, zones)
    txs = [transaction(f"u{i}@chain.{SPF_ZONE}") for i in range(40)]
    started = time.monotonic()
    await asyncio.gather(*(flt.check(tx) for tx in txs))
    assert all(tx.auth.spf.result is AuthResult.PASS for tx in txs)
    assert time.monotonic() - started < 5.0
