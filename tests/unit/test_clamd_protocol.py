"""The clamd protocol without a clamd: addresses, replies, chunk framing, settings."""

from __future__ import annotations

import struct

import pytest
from pydantic import ValidationError

from appliance.clamd import (
    CLEAN,
    ClamdClient,
    ClamdProtocolError,
    ClamdScanError,
    ClamdSizeLimitExceeded,
    ScanResult,
    TCPAddress,
    UnixAddress,
    chunk_frames,
    parse_address,
    parse_scan_reply,
)
from appliance.config.schema import Config
from appliance.filters.clamav import ClamAVFilter, shown_signature, virus_reply
from appliance.filters.registry import FILTER_CLASSES, build_filters, declared_symbols
from appliance.services import Services
from appliance.verdict import Mode, OnError, Stage


@pytest.mark.parametrize(("raw", "expected"), [
    (b"stream: OK\0", CLEAN),
    (b"stream: OK", CLEAN),  # a clamd that closes without the NUL
    (b"stream: OK\n", CLEAN),  # the newline-terminated (n-prefixed) form
    (b"stream: Test.EICAR.UNOFFICIAL FOUND\0", ScanResult("Test.EICAR.UNOFFICIAL")),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", ScanResult("Win.Test.EICAR_HDB-1")),
    (b"stream: Heuristics.Phishing.Email.SpoofedDomain FOUND\0",
     ScanResult("Heuristics.Phishing.Email.SpoofedDomain")),
])
def test_scan_replies_are_parsed(raw, expected):
    result = parse_scan_reply(raw)
    assert result == expected
    assert result.infected is (expected.signature is not None)


def test_size_limit_error_is_its_own_kind():
    with pytest.raises(ClamdSizeLimitExceeded) as info:
        parse_scan_reply(b"INSTREAM size limit exceeded. ERROR\0")
    assert info.value.detail == "INSTREAM size limit exceeded"
    assert isinstance(info.value, ClamdScanError)


@pytest.mark.parametrize("raw", [
    b"stream: Can't allocate memory ERROR\0",
    b"Error processing command. ERROR\0",
    b"stream: lstat() failed: No such file or directory. ERROR\0",
    b"ERROR\0",
])
def test_other_errors_are_scan_errors_with_their_text(raw):
    with pytest.raises(ClamdScanError) as info:
        parse_scan_reply(raw)
    assert not isinstance(info.value, ClamdSizeLimitExceeded)
    assert info.value.detail and "ERROR" not in info.value.detail


@pytest.mark.parametrize("raw", [
    b"",
    b"\0",
    b"UNKNOWN COMMAND\0",
    b"PONG\0",
    b"stream: MAYBE\0",
    b"stream:  FOUND\0",
    b"stream: Evil\x01Name FOUND\0",
    b"stream: " + b"A" * 300 + b" FOUND\0",
    b"HTTP/1.1 400 Bad Request\r\n\r\n",
])
def test_anything_else_is_a_protocol_error(raw):
    with pytest.raises(ClamdProtocolError):
        parse_scan_reply(raw)


@pytest.mark.parametrize(("value", "expected"), [
    ("/var/run/clamav/clamd.ctl", UnixAddress("/var/run/clamav/clamd.ctl")),
    ("/run//clamav/./clamd.ctl", UnixAddress("/run/clamav/clamd.ctl")),
    ("127.0.0.1:3310", TCPAddress("127.0.0.1", 3310)),
    ("[::1]:3310", TCPAddress("::1", 3310)),
    ("Clamd.Example.NET:3310", TCPAddress("clamd.example.net", 3310)),
    ("localhost:3310", TCPAddress("localhost", 3310)),
])
def test_addresses(value, expected):
    assert parse_address(value) == expected
    assert parse_address(str(expected)) == expected  # the canonical form parses back


@pytest.mark.parametrize("value", [
    "", "clamd.ctl", "relative/clamd.ctl", "127.0.0.1", "127.0.0.1:", ":3310",
    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:33a", "::1:3310", "[bad]:3310",
    "bad_host:3310", "/" + "x" * 200, "/run/cl\x00amd",
])
def test_bad_addresses_are_refused(value):
    with pytest.raises(ValueError):
        parse_address(value)


def test_chunk_frames_are_length_prefixed_and_end_with_zero():
    frames = [bytes(f) for f in chunk_frames(b"abcdefghij", chunk_size=4)]
    assert frames == [struct.pack("!L", 4), b"abcd", struct.pack("!L", 4), b"efgh",
                      struct.pack("!L", 2), b"ij", struct.pack("!L", 0)]
    assert [bytes(f) for f in chunk_frames(b"")] == [struct.pack("!L", 0)]
    with pytest.raises(ValueError):
        list(chunk_frames(b"x", chunk_size=0))


def test_client_rejects_bad_settings():
    with pytest.raises(ValueError):
        ClamdClient("nowhere")
    with pytest.raises(ValueError):
        ClamdClient("/run/clamd.ctl", timeout=0)
    client = ClamdClient("/run/clamd.ctl", timeout=2, connect_timeout=5)
    assert client.connect_timeout == 2  # the connect is part of the exchange


def test_signature_names_in_replies_are_printable_and_bounded():
    assert shown_signature("Win.Trojan.Agent-1 \r\nX") == "Win.Trojan.Agent-1???X"
    assert len(shown_signature("A" * 500)) == 100
    reply = virus_reply("Test.EICAR.UNOFFICIAL")
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert str(reply) == "554 5.7.1 Virus found: Test.EICAR.UNOFFICIAL"


def test_settings_default_off_with_tempfail_and_debian_socket():
    settings = Config().filters.clamav
    assert settings.mode is Mode.OFF
    assert settings.address == "/var/run/clamav/clamd.ctl"
    assert settings.max_stream_bytes == 25 * 1024 * 1024
    assert settings.oversize == "skip"
    assert settings.keep_virus is False
    assert settings.timeout == 30
    assert all(not isinstance(f, ClamAVFilter) for f in build_filters(Config(), Services()))


@pytest.mark.parametrize("bad", [
    {"address": "clamd.ctl"},
    {"address": "10.0.0.1:99999"},
    {"oversize": "deliver"},
    {"max_stream_bytes": 10},
    {"timeout": 0},
    {"on_error": "ignore"},
    {"unknown": 1},
])
def test_bad_settings_name_their_key(bad):
    with pytest.raises(ValidationError) as info:
        Config.model_validate({"filters": {"clamav": bad}})
    assert "clamav" in str(info.value)


def test_filter_is_declared_as_a_forced_network_check_at_data():
    assert ClamAVFilter in FILTER_CLASSES
    assert ClamAVFilter.stage is Stage.DATA
    assert ClamAVFilter.overrides_accept and ClamAVFilter.waits_on_network
    assert ClamAVFilter.default_on_error is OnError.TEMPFAIL
    declared = declared_symbols()
    for name in ("CLAMAV_VIRUS", "CLAMAV_UNSCANNED", "CLAMAV_ERROR"):
        assert name in declared
    assert declared["CLAMAV_UNSCANNED"].weight == 0
    assert declared["CLAMAV_ERROR"].weight == 0


def test_enabled_filter_uses_its_own_deadline_inside_the_pipeline_timeout():
    config = Config.model_validate({"filters": {"clamav": {
        "mode": "block", "address": "127.0.0.1:3310", "timeout": 10}}})
    [clamav] = [f for f in build_filters(config, Services()) if isinstance(f, ClamAVFilter)]
    assert clamav.on_error is OnError.TEMPFAIL
    assert clamav.client.address == TCPAddress("127.0.0.1", 3310)
    assert 0 < clamav.client.timeout < clamav.timeout
