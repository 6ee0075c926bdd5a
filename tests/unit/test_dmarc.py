"""DMARC without DNS: record parsing, organizational domains, alignment, evaluation."""

from __future__ import annotations

import pytest

from appliance.authresults import AuthResult, DKIMResult, SPFResult
from appliance.dmarc import (
    DMARCRecord,
    DMARCRecordError,
    Policy,
    aligned,
    evaluate,
    from_domains,
    is_dmarc_record,
    organizational_domain,
    parse_record,
    sampled,
)


def spf(result: AuthResult, domain: str) -> SPFResult:
    return SPFResult(result, "mailfrom", domain, f"bounce@{domain}")


def dkim(result: AuthResult, domain: str) -> DKIMResult:
    return DKIMResult(result, domain, "sel")


# -- records ---------------------------------------------------------------------------


def test_full_record() -> None:
    record = parse_record("v=DMARC1; p=quarantine; sp=reject; pct=25; adkim=s; aspf=s; "
                          "rua=mailto:d@example.org; fo=1")
    assert record == DMARCRecord(Policy.QUARANTINE, Policy.REJECT, 25, True, True)


def test_defaults_and_tolerated_syntax() -> None:
    record = parse_record("v=DMARC1;p=REJECT;")
    assert record == DMARCRecord(Policy.REJECT, None, 100, False, False)
    assert parse_record("v=DMARC1 ; p = none ;  ").policy is Policy.NONE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p=reject; v=DMARC1", "v=DMARC1"),  # v must come first
        ("v=DMARC2; p=reject", "v=DMARC1"),
        ("v=DMARC1", "p="),
        ("v=DMARC1; p=bogus", "p="),
        ("v=DMARC1; p=reject; garbage", "malformed"),
        ("v=DMARC1; 9x=1; p=reject", "malformed"),
    ],
)
def test_invalid_records_say_why(text: str, message: str) -> None:
    with pytest.raises(DMARCRecordError, match=message):
        parse_record(text)


def test_invalid_p_with_rua_means_none() -> None:
    # RFC 7489 6.6.3 step 6.
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:x@example.org").policy is Policy.NONE


def test_bad_optional_tags_take_defaults() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=maybe; pct=abc; adkim=x")
    assert record == DMARCRecord(Policy.REJECT, None, 100, False, False)
    assert parse_record("v=DMARC1; p=reject; pct=250").percent == 100


def test_which_txt_records_are_dmarc() -> None:
    assert is_dmarc_record("v=DMARC1; p=none")
    assert is_dmarc_record("v = DMARC1;p=none")
    assert not is_dmarc_record("v=spf1 -all")
    assert not is_dmarc_record("v=DMARC10; p=none")


# -- domains and alignment --------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("example.com", "example.com"),
        ("Mail.Example.COM.", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("user.github.io", "user.github.io"),  # a private suffix in the list
        ("co.uk", "co.uk"),  # a public suffix is its own
        ("deep.sub.example.test", "example.test"),  # unknown TLD: the default rule
    ],
)
def test_organizational_domain(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


def test_alignment_relaxed_and_strict() -> None:
    assert aligned("bounce.example.com", "example.com", strict=False)
    assert aligned("example.com", "news.example.com", strict=False)
    assert not aligned("bounce.example.com", "example.com", strict=True)
    assert aligned("EXAMPLE.com.", "example.com", strict=True)
    assert not aligned("example.net", "example.com", strict=False)
    # Two registrations under one public suffix are different organizations.
    assert not aligned("a.github.io", "b.github.io", strict=False)
    assert not aligned("", "example.com", strict=False)


def test_from_domains() -> None:
    assert from_domains(["Jane <jane@Example.COM>"]) == ["example.com"]
    assert from_domains(["a@x.test, b@y.test", "c@x.test"]) == ["x.test", "y.test"]
    assert from_domains(["=?utf-8?q?Doe=2C_John?= <j@z.test>"]) == ["z.test"]
    assert from_domains(["undisclosed-recipients:;"]) == []
    assert from_domains([]) == []


def test_sampling_is_deterministic_and_bounded() -> None:
    keys = [f"<{i}@example.com>" for i in range(2000)]
    assert all(sampled(100, k) for k in keys)
    assert not any(sampled(0, k) for k in keys)
    hits = [k for k in keys if sampled(30, k)]
    assert 450 < len(hits) < 750  # about 30 %
    assert hits == [k for k in keys if sampled(30, k)]  # same answer every time


# -- evaluation ---------------------------------------------------------------------------

REJECT = DMARCRecord(Policy.REJECT)


def test_pass_through_aligned_spf_or_dkim() -> None:
    result = evaluate(REJECT, "example.com", "example.com",
                      spf(AuthResult.PASS, "bounces.example.com"), [], "k")
    assert result.result is AuthResult.PASS and "SPF aligned" in result.reason
    result = evaluate(REJECT, "example.com", "example.com", spf(AuthResult.FAIL, "other.net"),
                      [dkim(AuthResult.FAIL, "example.com"), dkim(AuthResult.PASS,
                                                               "mail.example.com")], "k")
    assert result.result is AuthResult.PASS and "d=mail.example.com" in result.reason


def test_fail_when_passing_identifiers_do_not_align() -> None:
    result = evaluate(REJECT, "example.com", "example.com", spf(AuthResult.PASS, "esp.net"),
                      [dkim(AuthResult.PASS, "esp.net")], "k")
    assert (result.result, result.disposition) == (AuthResult.FAIL, Policy.REJECT)
    assert "SPF domain esp.net not aligned" in result.reason
    assert "DKIM d=esp.net not aligned" in result.reason


def test_strict_alignment() -> None:
    strict = DMARCRecord(Policy.QUARANTINE, dkim_strict=True, spf_strict=True)
    result = evaluate(strict, "example.com", "example.com",
                      spf(AuthResult.PASS, "bounce.example.com"),
                      [dkim(AuthResult.PASS, "mail.example.com")], "k")
    assert (result.result, result.disposition) == (AuthResult.FAIL, Policy.QUARANTINE)
    assert "not strictly aligned" in result.reason


def test_subdomain_policy_applies_to_records_found_at_the_org_domain() -> None:
    record = DMARCRecord(Policy.REJECT, subdomain_policy=Policy.NONE)
    sub = evaluate(record, "news.example.com", "example.com", None, [], "k")
    assert (sub.result, sub.policy, sub.disposition) == (AuthResult.FAIL, Policy.NONE,
                                                          Policy.NONE)
    top = evaluate(record, "example.com", "example.com", None, [], "k")
    assert top.policy is Policy.REJECT


def test_pct_steps_the_policy_down() -> None:
    record = DMARCRecord(Policy.REJECT, percent=0)
    result = evaluate(record, "example.com", "example.com", None, [], "k")
    assert (result.policy, result.disposition) == (Policy.REJECT, Policy.QUARANTINE)
    assert "pct=0 not sampled" in result.reason
    quarantine = evaluate(DMARCRecord(Policy.QUARANTINE, percent=0), "example.com",
                          "example.com", None, [], "k")
    assert quarantine.disposition is Policy.NONE


def test_temporary_errors_never_fail_a_strict_policy() -> None:
    result = evaluate(REJECT, "example.com", "example.com", spf(AuthResult.TEMPERROR,
                      "example.com"), [], "k")
    assert result.result is AuthResult.TEMPERROR and result.disposition is None
    result = evaluate(REJECT, "example.com", "example.com", None,
                      [dkim(AuthResult.TEMPERROR, "example.com")], "k")
    assert result.result is AuthResult.TEMPERROR
    # p=none asks for nothing, so a temporary error does not matter.
    monitor = evaluate(DMARCRecord(Policy.NONE), "example.com", "example.com",
                       spf(AuthResult.TEMPERROR, "example.com"), [], "k")
    assert (monitor.result, monitor.disposition) == (AuthResult.FAIL, Policy.NONE)
