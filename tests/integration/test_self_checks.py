"""Self-checks (appliance/status.py) against the real thing: PTR and DNSBL answers from NSD,
`postconf -n` of the test Postfix, clamd's VERSION, certificates made with cryptography and
the openssl command, and `postwall status` showing them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import status
from appliance.config.schema import Config
from appliance.status import State
from tests.support.clamd import clamd_unavailable_reason
from tests.support.dns_server import AuthoritativeDNS
from tests.support.services import REPO_ROOT

DOMAIN = "selfcheck.test"
REVERSE = "2.0.192.in-addr.arpa"
BLOCKLIST = "bl.selfcheck.test"
REFUSING = "refusing.selfcheck.test"

ZONES = {
    DOMAIN: [
        "mail-gw IN A 192.0.2.10",
        "other IN A 192.0.2.11",
        "elsewhere IN A 192.0.2.99",  # the PTR of .13 names it, but it points elsewhere
    ],
    REVERSE: [
        f"10 IN PTR mail-gw.{DOMAIN}.",
        f"11 IN PTR other.{DOMAIN}.",
        f"13 IN PTR elsewhere.{DOMAIN}.",
        # .12 has no PTR at all
    ],
    BLOCKLIST: ["11.2.0.192 IN A 127.0.0.2", "2.0.0.127 IN A 127.0.0.2"],
    REFUSING: ["* IN A 127.255.255.254"],
}


@pytest.fixture(scope="module")
def zones(dns_server: AuthoritativeDNS) -> AuthoritativeDNS:
    dns_server.set_zones(ZONES)
    return dns_server


def config(tmp_path: Path, **settings: Any) -> Config:
    return Config.model_validate({"data_dir": str(tmp_path / "data"), **settings})


def dns_config(dns: AuthoritativeDNS, tmp_path: Path, address: str, hostname: str,
               blocklists: list[str] | None = None) -> Config:
    return config(
        tmp_path, dns={"nameservers": [dns.nameserver]}, smtp={"hostname": hostname},
        self_checks={"public_address": address},
        filters={"dnsbl": {"mode": "score", "zones": [{"zone": z} for z in blocklists or []]}},
    )


# -- PTR -----------------------------------------------------------------------------------


def test_matching_ptr_is_forward_confirmed(zones, tmp_path):
    outcome = status.check_hostname_ptr(
        dns_config(zones, tmp_path, "192.0.2.10", f"mail-gw.{DOMAIN}"))
    assert outcome.state is State.OK, outcome
    assert outcome.summary == f"192.0.2.10 <-> mail-gw.{DOMAIN} (PTR forward-confirmed)"


def test_ptr_naming_another_host_says_what_to_publish(zones, tmp_path):
    outcome = status.check_hostname_ptr(
        dns_config(zones, tmp_path, "192.0.2.11", f"mail-gw.{DOMAIN}"))
    assert outcome.state is State.FAIL
    assert f"the PTR of 192.0.2.11 is other.{DOMAIN}, not mail-gw.{DOMAIN}" in outcome.summary
    assert f"set smtp.hostname to other.{DOMAIN}" in outcome.summary


def test_missing_ptr_says_to_ask_the_isp(zones, tmp_path):
    outcome = status.check_hostname_ptr(
        dns_config(zones, tmp_path, "192.0.2.12", f"mail-gw.{DOMAIN}"))
    assert outcome.state is State.FAIL
    assert outcome.summary == (f"192.0.2.12 has no PTR record: publish PTR mail-gw.{DOMAIN} "
                               "for 192.0.2.12 at your ISP (the owner of the address block)")


def test_ptr_that_is_not_forward_confirmed(zones, tmp_path):
    outcome = status.check_hostname_ptr(
        dns_config(zones, tmp_path, "192.0.2.13", f"elsewhere.{DOMAIN}"))
    assert outcome.state is State.FAIL
    assert f"elsewhere.{DOMAIN} resolves to 192.0.2.99, not 192.0.2.13" in outcome.summary
    assert f"publish A elsewhere.{DOMAIN} -> 192.0.2.13" in outcome.summary


def test_without_public_address_ptr_and_dnsbl_are_unknown(tmp_path):
    cfg = config(tmp_path)  # listens on loopback: not a public address
    for check in (status.check_hostname_ptr, status.check_own_dnsbl):
        outcome = check(cfg)
        assert outcome.state is State.UNKNOWN
        assert "set self_checks.public_address" in outcome.summary


def test_unanswering_resolver_is_unknown_not_a_failure(tmp_path):
    from tests.support.dns_server import BrokenDNS

    with BrokenDNS("silent") as broken:
        cfg = config(tmp_path, dns={"nameservers": [broken.nameserver]},
                     self_checks={"public_address": "192.0.2.10"},
                     smtp={"hostname": f"mail-gw.{DOMAIN}"})
        started = time.monotonic()
        outcome = status.check_hostname_ptr(cfg)
    assert outcome.state is State.UNKNOWN and "no answer for the PTR" in outcome.summary
    assert time.monotonic() - started < status.CHECK_TIMEOUT + 1


# -- own address on DNSBLs -------------------------------------------------------------------


def test_unlisted_own_address(zones, tmp_path):
    outcome = status.check_own_dnsbl(
        dns_config(zones, tmp_path, "192.0.2.10", "x", [BLOCKLIST]))
    assert outcome.state is State.OK
    assert outcome.summary == "192.0.2.10 is on none of 1 zone(s)"


def test_listed_own_address(zones, tmp_path):
    outcome = status.check_own_dnsbl(
        dns_config(zones, tmp_path, "192.0.2.11", "x", [BLOCKLIST]))
    assert outcome.state is State.FAIL
    assert outcome.summary.startswith(f"192.0.2.11 is listed on {BLOCKLIST} (127.0.0.2)")
    assert "delisting" in outcome.summary


def test_refusing_zone_is_not_a_listing(zones, tmp_path):
    outcome = status.check_own_dnsbl(
        dns_config(zones, tmp_path, "192.0.2.10", "x", [BLOCKLIST, REFUSING]))
    assert outcome.state is State.WARN
    assert f"not checked: {REFUSING}: refused us (127.255.255.254)" in outcome.summary


# -- Postfix configuration ---------------------------------------------------------------------


def test_postfix_configuration_matches_and_one_changed_line_is_named(postfix, tmp_path):
    live = postfix.postconf("-n")
    expected = tmp_path / "postfix-expected.conf"
    expected.write_text(live)
    cfg = config(tmp_path, self_checks={"postfix_expected_file": str(expected),
                                        "postfix_config_dir": str(postfix.config_dir)})
    outcome = status.check_postfix_config(cfg)
    assert outcome.state is State.OK, outcome
    lines = live.splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("mynetworks =")]
    lines[index] = "mynetworks = 127.0.0.0/8 192.168.0.0/16"
    expected.write_text("\n".join(lines) + "\n")
    outcome = status.check_postfix_config(cfg)
    assert outcome.state is State.WARN
    assert ("1 setting(s) differ from what the postfix role wrote: mynetworks = 127.0.0.0/8 "
            "(expected 127.0.0.0/8 192.168.0.0/16)") in outcome.summary
    assert "Re-run the playbook" in outcome.summary


def test_postfix_configuration_without_expected_file_is_unknown(tmp_path):
    cfg = config(tmp_path, self_checks={"postfix_expected_file": str(tmp_path / "none")})
    outcome = status.check_postfix_config(cfg)
    assert outcome.state is State.UNKNOWN and "the postfix role writes it" in outcome.summary


def test_postconf_of_a_broken_config_dir_is_unknown(tmp_path):
    expected = tmp_path / "expected.conf"
    expected.write_text("mynetworks = 127.0.0.0/8\n")
    cfg = config(tmp_path, self_checks={"postfix_expected_file": str(expected),
                                        "postfix_config_dir": str(tmp_path / "missing")})
    outcome = status.check_postfix_config(cfg)
    assert outcome.state is State.UNKNOWN and "postconf -n failed" in outcome.summary


# -- clamd signatures ------------------------------------------------------------------------

requires_clamd = pytest.mark.skipif(clamd_unavailable_reason() is not None,
                                    reason=clamd_unavailable_reason() or "")


@requires_clamd
@pytest.mark.parametrize(("age_days", "expected"), [
    (0.1, State.OK), (3, State.WARN), (8, State.FAIL)])
def test_signature_age_of_a_clamd_without_dated_signatures(clamd, tmp_path, age_days, expected):
    db = tmp_path / "clamav"
    db.mkdir()
    shutil.copy2(clamd.db_dir / "test.ndb", db / "daily.cld")
    moment = time.time() - age_days * 86400
    os.utime(db / "daily.cld", (moment, moment))
    cfg = config(tmp_path, filters={"clamav": {"mode": "block", "address": clamd.address}},
                 self_checks={"clamd_database_dir": str(db)})
    outcome = status.check_clamd_signatures(cfg)
    assert outcome.state is expected, outcome
    assert outcome.summary.startswith(f"signatures {age_days:.1f} day(s) old")
    assert str(db / "daily.cld") in outcome.detail
    if expected is not State.OK:
        assert "clamav-freshclam" in outcome.summary


@requires_clamd
def test_signature_check_without_any_database_is_unknown(clamd, tmp_path):
    cfg = config(tmp_path, filters={"clamav": {"mode": "block", "address": clamd.address}},
                 self_checks={"clamd_database_dir": str(tmp_path)})
    outcome = status.check_clamd_signatures(cfg)
    assert outcome.state is State.UNKNOWN
    assert "clamd's VERSION has none (ClamAV " in outcome.summary


def test_signature_date_from_a_clamd_version_answer():
    assert status.clamd_signature_date("ClamAV 1.4.6/27500/Wed Nov 25 08:00:00 2026") == \
        datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert status.clamd_signature_date("ClamAV 1.4.6") is None
    assert status.clamd_signature_date("ClamAV 1.4.6/27500/garbage") is None


# -- certificates ------------------------------------------------------------------------------


def make_certificate(path: Path, *, days_left: float, days_valid: float = 365) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postwall.example.com")])
    now = datetime.now(UTC)
    ends = now + timedelta(days=days_left)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(ends - timedelta(days=days_valid)).not_valid_after(ends)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(("days_left", "expected", "text"), [
    (200, State.OK, "valid until"),
    (10, State.WARN, "expires on"),
    (-1, State.FAIL, "expired on"),
])
def test_webui_certificate(tmp_path, days_left, expected, text):
    cert = make_certificate(tmp_path / "webui.crt", days_left=days_left)
    cfg = config(tmp_path, webui={"cert_file": str(cert), "key_file": str(tmp_path / "k")})
    outcome = status.check_certificates(cfg)
    assert outcome.state is expected, outcome
    assert text in outcome.summary and str(cert) in outcome.summary


def test_certificate_made_by_openssl_near_expiry(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "5", "-subj",
                    "/CN=mx.example.com", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    valid = make_certificate(tmp_path / "webui.crt", days_left=300)
    cfg = config(tmp_path, tls={"cert_file": str(cert), "key_file": str(key)},
                 webui={"cert_file": str(valid), "key_file": str(key)})
    outcome = status.check_certificates(cfg)
    assert outcome.state is State.WARN
    assert "CN=mx.example.com" in outcome.summary and "in 5 day(s): renew it" in outcome.summary
    assert "valid until" in outcome.detail  # the good one is listed in the detail


@pytest.mark.parametrize(("content", "text"), [
    (None, "unreadable"), (b"not a certificate\n", "not a PEM certificate")])
def test_unreadable_certificate_fails(tmp_path, content, text):
    cert = tmp_path / "webui.crt"
    if content is not None:
        cert.write_bytes(content)
    cfg = config(tmp_path, webui={"cert_file": str(cert), "key_file": str(tmp_path / "k")})
    outcome = status.check_certificates(cfg)
    assert outcome.state is State.FAIL and text in outcome.summary


# -- versions and the command --------------------------------------------------------------------


@requires_clamd
def test_versions_name_postwall_postfix_and_clamd(clamd, tmp_path):
    from importlib import metadata

    cfg = config(tmp_path, filters={"clamav": {"mode": "block", "address": clamd.address}})
    outcome = status.check_versions(cfg)
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert outcome.state is State.OK
    assert outcome.summary.startswith(
        f"Postwall {metadata.version('postwall')}, Postfix {postfix}, ClamAV ")
    assert f"aiosmtpd {metadata.version('aiosmtpd')}" in outcome.detail


def test_postwall_status_shows_the_self_checks(zones, tmp_path):
    cert = make_certificate(tmp_path / "webui.crt", days_left=-3)
    path = tmp_path / "postwall.yml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "dns": {"nameservers": [zones.nameserver]},
        "smtp": {"hostname": f"mail-gw.{DOMAIN}"},
        "self_checks": {"public_address": "192.0.2.11",
                        "postfix_expected_file": str(tmp_path / "none")},
        "filters": {"clamav": {"mode": "off"},
                    "dnsbl": {"mode": "score", "zones": [{"zone": BLOCKLIST}]}},
        "webui": {"cert_file": str(cert), "key_file": str(tmp_path / "k")},
    }))
    result = subprocess.run([sys.executable, "-m", "appliance", "status", "--config", str(path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = {line[9:33].strip(): line for line in result.stdout.splitlines()}
    assert lines["Public host name (PTR)"].startswith("fail")
    assert lines["Own address on DNSBLs"].startswith("fail")
    assert lines["Certificates"].startswith("fail") and "expired on" in lines["Certificates"]
    assert lines["Postfix configuration"].startswith("unknown")
    assert lines["Versions"].startswith("ok")
