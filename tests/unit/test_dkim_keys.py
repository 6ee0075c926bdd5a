"""DKIM keys made on the appliance: files, selectors, rotation, DNS records, the CLI, and
the signer's choice of domain and its behaviour with broken keys (no network)."""

from __future__ import annotations

import asyncio
import ipaddress
import os

import dkim
import pytest
import yaml
from click.testing import CliRunner

from appliance import dkim_keys
from appliance.cli import main
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.dkim_keys import DKIMKeyError
from appliance.dkim_signing import DKIMSigner

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@remote.example\r\nSubject: hi\r\n"
           b"Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n\r\nHello.\r\n")


def test_generate_writes_an_owner_only_key_and_activates_the_first(tmp_path):
    record = dkim_keys.generate(tmp_path, "Example.COM.", "s1")
    path = tmp_path / "dkim" / "example.com" / "s1.key"
    assert record.path == path and record.active and record.domain == "example.com"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert record.name == "s1._domainkey.example.com"
    assert record.value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # 2048-bit SPKI
    second = dkim_keys.generate(tmp_path, "example.com", "s2")
    assert not second.active and dkim_keys.active_selector(tmp_path, "example.com") == "s1"


def test_txt_record_is_split_into_255_octet_strings(tmp_path):
    record = dkim_keys.generate(tmp_path, "example.com", "big")
    assert len(record.value) > 255
    assert all(len(s) <= 255 for s in record.strings)
    assert "".join(record.strings) == record.value
    line = record.zone_line()
    assert line.startswith('big._domainkey.example.com. IN TXT ( "v=DKIM1;')
    assert line.count('"') == 2 * len(record.strings)


def test_rotate_activate_remove(tmp_path):
    dkim_keys.generate(tmp_path, "example.com", "old")
    dkim_keys.rotate(tmp_path, "example.com", "new", algorithm="ed25519")
    assert dkim_keys.load_active(tmp_path, "example.com").selector == "new"
    records = dkim_keys.dns_records(tmp_path, "example.com")
    assert [(r.selector, r.active, r.algorithm) for r in records] == [
        ("new", True, "ed25519"), ("old", False, "rsa")]
    with pytest.raises(DKIMKeyError, match="active selector"):
        dkim_keys.remove(tmp_path, "example.com", "new")
    dkim_keys.remove(tmp_path, "example.com", "old")
    assert [r.selector for r in dkim_keys.dns_records(tmp_path, "example.com")] == ["new"]
    dkim_keys.activate(tmp_path, "example.com", "new")
    with pytest.raises(DKIMKeyError, match="no key"):
        dkim_keys.activate(tmp_path, "example.com", "gone")


@pytest.mark.parametrize("domain, selector, message", [
    ("example.com", "../etc", "invalid selector"),
    ("example.com", "active", "invalid selector"),
    ("example.com", "-bad", "invalid selector"),
    ("../../etc", "s1", "invalid domain"),
    ("exa mple.com", "s1", "invalid domain"),
])
def test_bad_names_are_refused(tmp_path, domain, selector, message):
    with pytest.raises(DKIMKeyError, match=message):
        dkim_keys.generate(tmp_path, domain, selector)


def test_an_existing_key_is_never_replaced(tmp_path):
    dkim_keys.generate(tmp_path, "example.com", "s1")
    before = (tmp_path / "dkim/example.com/s1.key").read_bytes()
    with pytest.raises(DKIMKeyError, match="exists already"):
        dkim_keys.generate(tmp_path, "example.com", "s1")
    assert (tmp_path / "dkim/example.com/s1.key").read_bytes() == before


def test_load_active_refuses_missing_unreadable_and_foreign_keys(tmp_path):
    with pytest.raises(DKIMKeyError, match="no active DKIM key"):
        dkim_keys.load_active(tmp_path, "example.com")
    dkim_keys.generate(tmp_path, "example.com", "s1")
    path = tmp_path / "dkim/example.com/s1.key"
    os.chmod(path, 0o644)
    with pytest.raises(DKIMKeyError, match="readable by others"):
        dkim_keys.load_active(tmp_path, "example.com")
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(DKIMKeyError, match="neither an RSA PEM key"):
        dkim_keys.load_active(tmp_path, "example.com")
    path.unlink()
    with pytest.raises(DKIMKeyError, match="is missing"):
        dkim_keys.load_active(tmp_path, "example.com")


def test_cli_generate_show_rotate_remove(tmp_path):
    config = tmp_path / "postwall.yml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    runner = CliRunner()
    out = runner.invoke(main, ["dkim", "generate", "example.com", "--selector", "s1",
                               "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert 's1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=' in out.output
    out = runner.invoke(main, ["dkim", "rotate", "example.com", "--selector", "s2",
                               "--config", str(config)])
    assert out.exit_code == 0 and "s2 (rsa, active" in out.output
    out = runner.invoke(main, ["dkim", "show", "example.com", "--config", str(config)])
    assert out.output.index("selector s2") < out.output.index("selector s1")
    assert "s1 (rsa, published, not signing" in out.output
    out = runner.invoke(main, ["dkim", "remove", "example.com", "s2", "--config", str(config)])
    assert out.exit_code != 0 and "rotate first" in out.output
    out = runner.invoke(main, ["dkim", "show", "other.example", "--config", str(config)])
    assert out.exit_code != 0 and "no DKIM key for other.example" in out.output


# -- the signer -----------------------------------------------------------------------------


def relay_tx(sender: str = "alice@example.com") -> TransactionContext:
    conn = ConnectionContext(ipaddress.ip_address("10.0.0.5"), 1, Listener.RELAY)
    return TransactionContext(connection=conn, mail_from=sender)


def signer_for(tmp_path, **settings) -> DKIMSigner:
    return DKIMSigner(Config(data_dir=tmp_path, dkim_signing={"enabled": True, **settings}))


def verify_with(tmp_path, domain):
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        selector = name.decode().split(".")[0]
        return dkim_keys.record_for(tmp_path, domain, selector).value.encode()
    return dnsfunc


def test_signs_for_the_from_domain_or_its_parent(tmp_path):
    dkim_keys.generate(tmp_path, "example.com", "s1")
    signer = signer_for(tmp_path)
    signed = asyncio.run(signer.sign(relay_tx(), MESSAGE))
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com")
    assert dkim.verify(signed, dnsfunc=verify_with(tmp_path, "example.com"))
    sub = MESSAGE.replace(b"alice@example.com", b"alice@mail.example.com")
    assert b"d=example.com" in asyncio.run(signer.sign(relay_tx(), sub))
    other = MESSAGE.replace(b"alice@example.com", b"alice@other.example")
    assert asyncio.run(signer.sign(relay_tx("x@other.example"), other)) == other


def test_from_and_subject_are_oversigned(tmp_path):
    dkim_keys.generate(tmp_path, "example.com", "s1")
    signed = asyncio.run(signer_for(tmp_path).sign(relay_tx(), MESSAGE))
    header = signed.split(b"\r\n\r\n")[0].replace(b"\r\n", b"").replace(b" ", b"")
    assert b"h=from:to:subject:date:from:subject" in header
    added = signed.replace(b"Subject: hi\r\n", b"Subject: hi\r\nSubject: win money\r\n")
    assert not dkim.verify(added, dnsfunc=verify_with(tmp_path, "example.com"))


def test_disabled_signer_leaves_mail_alone(tmp_path):
    dkim_keys.generate(tmp_path, "example.com", "s1")
    signer = DKIMSigner(Config(data_dir=tmp_path))
    assert asyncio.run(signer.sign(relay_tx(), MESSAGE)) == MESSAGE


def test_bad_key_sends_unsigned_or_tempfails(tmp_path, caplog):
    dkim_keys.generate(tmp_path, "example.com", "s1")
    (tmp_path / "dkim/example.com/s1.key").write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nx\n")
    tx = relay_tx()
    assert asyncio.run(signer_for(tmp_path).sign(tx, MESSAGE)) == MESSAGE
    assert "DKIM signing for example.com impossible" in caplog.text
    assert tx.symbols[-1].name == "DKIM_SIGN_ERROR"
    assert asyncio.run(signer_for(tmp_path, on_key_error="tempfail").sign(relay_tx(), MESSAGE)) \
        is None


def test_headers_setting_must_sign_from():
    with pytest.raises(ValueError, match="must include 'from'"):
        Config(dkim_signing={"headers": ["subject"]})
