"""ClamAV against a real clamd (tests/support/clamd.py): the asyncio client over a unix
socket and TCP, and the proxy end to end (client -> postwall -> Postfix -> recorder)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from appliance.clamd import (
    ClamdClient,
    ClamdProtocolError,
    ClamdSizeLimitExceeded,
    ClamdTimeout,
    ClamdUnavailable,
)
from tests.support.clamd import EICAR, ClamdInstance, clamd_unavailable_reason
from tests.support.services import REPO_ROOT, free_port, wait_until
from tests.support.smtpclient import send_message

pytestmark = pytest.mark.skipif(clamd_unavailable_reason() is not None,
                                reason=clamd_unavailable_reason() or "")

VIRUS_NAME = "Test.EICAR.UNOFFICIAL"
SENDER = "alice@partner.example"
RCPT = "bob@example.com"


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def plain(subject: str, body: bytes = b"Hello,\r\nsee you.\r\n", sender: str = SENDER) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
        f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@partner.example>"
        "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode() + body


def with_attachment(subject: str, filename: str, payload: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    msg.set_content("see attached")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream",
                       filename=filename)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def eicar_message(kind: str) -> bytes:
    if kind == "plain":
        return plain("plain virus", b"look:\r\n" + EICAR + b"\r\n")
    if kind == "base64":
        message = with_attachment("base64 virus", "notes.txt", EICAR)
        assert EICAR not in message and base64.b64encode(EICAR)[:40] in message
        return message
    if kind == "zip":
        message = with_attachment("zipped virus", "docs.zip",
                                  zipped({"docs/readme.txt": b"hi", "docs/tool.txt": EICAR}))
        assert b"EICAR" not in message
        return message
    raise ValueError(kind)


def send(proxy, content: bytes, *, sender: str = SENDER, relay: bool = False):
    host, port = proxy.relay if relay else proxy.inbound
    return send_message(host, port, content, mail_from=sender, rcpt_tos=[RCPT])


def clamav(address: str, **settings) -> dict:
    return {"filters": {"clamav": {"mode": "block", "address": address, **settings}}}


def assert_refused_as_virus(result) -> None:
    assert result.data is not None, result.final
    assert (result.data.code, result.data.enhanced) == (554, "5.7.1"), result.data
    assert f"Virus found: {VIRUS_NAME}" in result.data.text


def assert_still_serving(proxy, recorded, subject: str = "clean afterwards") -> None:
    """A clean message goes through after whatever went wrong before."""
    result = send(proxy, plain(subject))
    assert result.accepted, result.final
    recorded.wait_for_match(header="Subject", value=subject)


def log_rows(data_dir: Path, count: int) -> list[tuple]:
    rows: list[tuple] = []

    def enough() -> bool:
        nonlocal rows
        with contextlib.closing(sqlite3.connect(data_dir / "postwall.db")) as db:
            rows = db.execute(
                "SELECT id, action, reply, quarantine_path FROM message_log ORDER BY time"
            ).fetchall()
        return len(rows) >= count

    assert wait_until(enough, 5.0, interval=0.1), rows
    return rows


def logged_symbols(data_dir: Path, txid: str) -> list[tuple[str, float, str]]:
    with contextlib.closing(sqlite3.connect(data_dir / "postwall.db")) as db:
        return db.execute(
            "SELECT name, score, reason FROM message_symbols WHERE message_id = ? "
            "ORDER BY position", (txid,)
        ).fetchall()


# --------------------------------------------------------------------------------------
# Peers that misbehave: a clamd that never answers, one that answers nonsense
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def answering_listener(reply: bytes) -> Iterator[str]:
    """A TCP server that reads a little, sends `reply` and closes each connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
def own_clamd() -> Iterator[ClamdInstance]:
    """A clamd this test may stop (the session one stays up for the others)."""
    instance = ClamdInstance().start()
    yield instance
    instance.cleanup()


@pytest.fixture(scope="module")
def small_clamd() -> Iterator[ClamdInstance]:
    """A clamd whose StreamMaxLength (100 KiB) is below what the proxy sends it."""
    instance = ClamdInstance(tcp=True, stream_max_length=100 * 1024).start()
    yield instance
    instance.cleanup()


# --------------------------------------------------------------------------------------
# The client against the real clamd
# --------------------------------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def address(request, clamd) -> str:
    return clamd.address if request.param == "unix" else clamd.tcp_address


async def test_client_health_and_scans(address, clamd):
    assert "Loaded 2 signatures" in clamd.log  # both test.ndb and test.hdb
    client = ClamdClient(address, timeout=10)
    await client.ping()
    assert (await client.version()).startswith("ClamAV 1.")
    clean = await client.instream(plain("clean"))
    assert not clean.infected and clean.signature is None
    assert (await client.instream(EICAR)).signature == VIRUS_NAME
    for kind in ("plain", "base64", "zip"):
        assert (await client.instream(eicar_message(kind))).signature == VIRUS_NAME, kind


async def test_client_streams_in_chunks_across_boundaries(address):
    # EICAR split over three chunks, after more than a megabyte of clean text.
    padding = b"clean line of text\r\n" * 60000
    client = ClamdClient(address, timeout=20, chunk_size=31)
    small = await client.instream(b"x" * 20 + EICAR + b"\r\n")
    assert small.signature == VIRUS_NAME
    big = ClamdClient(address, timeout=20, chunk_size=64 * 1024)
    offset = (len(padding) // (64 * 1024) + 1) * 64 * 1024 - 30
    data = (padding + b"y" * (offset - len(padding)) + EICAR)
    assert (await big.instream(data)).signature == VIRUS_NAME
    assert not (await big.instream(padding)).infected


async def test_concurrent_scans_get_their_own_answers(address):
    client = ClamdClient(address, timeout=20)
    messages = [eicar_message("base64") if i % 3 == 0 else plain(f"m{i}") for i in range(30)]
    results = await asyncio.gather(*(client.instream(m) for m in messages))
    assert [r.infected for r in results] == [i % 3 == 0 for i in range(30)]


async def test_unreachable_clamd_is_a_clear_error(tmp_path):
    missing = ClamdClient(str(tmp_path / "no-such.sock"), timeout=2)
    with pytest.raises(ClamdUnavailable, match=r"no-such\.sock"):
        await missing.instream(b"x")
    refused = ClamdClient(f"127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ClamdUnavailable, match="refused"):
        await refused.ping()


async def test_silent_clamd_times_out():
    with silent_listener() as address:
        client = ClamdClient(address, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ClamdTimeout, match=r"within 0\.5s"):
            await client.instream(b"x" * 1000)
        with pytest.raises(ClamdTimeout):
            await client.ping()
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("reply", [b"HTTP/1.0 400 Bad Request\r\n\r\n", b"", b"X" * 20000])
async def test_a_peer_that_is_not_clamd_is_a_protocol_error(reply):
    with answering_listener(reply) as address:
        client = ClamdClient(address, timeout=5)
        with pytest.raises(ClamdProtocolError):
            await client.instream(b"hello")
        with pytest.raises(ClamdProtocolError):
            await client.version()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_stream_longer_than_streammaxlength_is_reported_as_such(small_clamd, transport):
    address = small_clamd.address if transport == "unix" else small_clamd.tcp_address
    client = ClamdClient(address, timeout=10)
    for size in (100 * 1024 + 1, 3 * 1024 * 1024):
        with pytest.raises(ClamdSizeLimitExceeded, match="size limit exceeded"):
            await client.instream(b"z" * size)
    assert (await client.instream(b"a" * (100 * 1024 - len(EICAR)) + EICAR)).infected
    await client.ping()


# --------------------------------------------------------------------------------------
# Through the proxy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "base64", "zip"])
def test_virus_is_refused_and_nothing_reaches_the_mail_server(
        proxy_factory, recorded, clamd, kind):
    proxy = proxy_factory(clamav(clamd.address))
    assert_refused_as_virus(send(proxy, eicar_message(kind)))
    recorded.assert_no_messages(within=0.5)
    assert_still_serving(proxy, recorded)
    [message] = recorded.messages()
    assert "CLAMAV" not in (message.header("X-Spam-Symbols") or "")
    # Without keep_virus no copy exists anywhere (a virus never lands in spam/).
    mail = proxy.data_dir / "mail"
    assert not any(p.suffix == ".eml" for p in mail.rglob("*")), list(mail.rglob("*.eml"))


def test_virus_beats_whitelist_noprocessing_and_ip_allow(proxy_factory, recorded, clamd):
    proxy = proxy_factory(
        filters={
            "clamav": {"mode": "block", "address": clamd.tcp_address},
            "address_lists": {"whitelist": ["*@partner.example"],
                              "noprocessing": ["boss@partner2.example"]},
        },
    )
    assert_refused_as_virus(send(proxy, eicar_message("zip")))
    assert_refused_as_virus(send(proxy, eicar_message("plain"), sender="boss@partner2.example"))
    recorded.assert_no_messages(within=0.5)
    assert send(proxy, plain("whitelisted clean")).accepted
    [message] = recorded.wait_for(1)
    assert message.header("X-Spam-Status") == "No, accepted by address_lists"

    allowed = proxy_factory(filters={"clamav": {"mode": "block", "address": clamd.address},
                                     "ip_lists": {"allow": ["127.0.0.0/8"]}})
    assert_refused_as_virus(send(allowed, eicar_message("base64")))
    assert_still_serving(allowed, recorded, "ip allowed clean")


def test_clamd_down_tempfails_with_451_and_recovers(proxy_factory, recorded, own_clamd):
    proxy = proxy_factory(clamav(own_clamd.address))
    with own_clamd.stopped():
        for content in (plain("while clamd is down"), eicar_message("plain")):
            result = send(proxy, content)
            assert (result.data.code, result.data.enhanced) == (451, "4.7.1"), result.data
        # A whitelisted sender gets no unscanned pass either.
        whitelisted = proxy_factory(filters={
            "clamav": {"mode": "block", "address": own_clamd.address},
            "address_lists": {"whitelist": ["*@partner.example"]}})
        assert send(whitelisted, plain("whitelisted, clamd down")).data.code == 451
        recorded.assert_no_messages(within=0.5)
    assert_refused_as_virus(send(proxy, eicar_message("plain")))
    assert_still_serving(proxy, recorded, "clamd is back")
    rows = log_rows(proxy.data_dir, 4)
    assert [row[1] for row in rows] == ["tempfail", "tempfail", "reject", "deliver"]
    errors = logged_symbols(proxy.data_dir, rows[0][0])
    assert [name for name, _, _ in errors] == ["CLAMAV_ERROR"]
    assert "cannot connect" in errors[0][2]


def test_clamd_down_with_fail_open_delivers_marked(proxy_factory, recorded, own_clamd):
    proxy = proxy_factory(clamav(own_clamd.address, on_error="fail_open"))
    with own_clamd.stopped():
        result = send(proxy, plain("fail open"))
        assert result.accepted, result.final
    [message] = recorded.wait_for(1)
    assert "CLAMAV_ERROR=0" in message.header("X-Spam-Symbols")
    assert_refused_as_virus(send(proxy, eicar_message("base64")))


def test_silent_clamd_tempfails_within_the_timeout(proxy_factory, recorded):
    with silent_listener() as address:
        proxy = proxy_factory(clamav(address, timeout=1))
        started = time.monotonic()
        result = send(proxy, plain("scanner hangs"))
        assert (result.data.code, result.data.enhanced) == (451, "4.7.1"), result.data
        assert time.monotonic() - started < 5
        assert send(proxy, plain("scanner still hangs")).data.code == 451
    recorded.assert_no_messages(within=0.5)


@pytest.mark.parametrize(("policy", "code", "enhanced"), [
    ("skip", 250, None), ("tempfail", 452, "4.3.4"), ("reject", 552, "5.3.4")])
def test_message_above_max_stream_bytes_follows_the_oversize_policy(
        proxy_factory, recorded, clamd, policy, code, enhanced):
    proxy = proxy_factory(clamav(clamd.address, max_stream_bytes=4096, oversize=policy))
    big = plain("big one", b"ordinary text line\r\n" * 400)
    assert len(big) > 4096
    result = send(proxy, big)
    assert result.data.code == code, result.data
    if enhanced:
        assert result.data.enhanced == enhanced
        recorded.assert_no_messages(within=0.5)
    else:
        [message] = recorded.wait_for(1)
        assert "CLAMAV_UNSCANNED=0" in message.header("X-Spam-Symbols")
    # Below the limit scanning goes on as usual.
    assert_refused_as_virus(send(proxy, eicar_message("zip")))
    assert_still_serving(proxy, recorded, f"small after {policy}")


@pytest.mark.parametrize(("policy", "code"), [("skip", 250), ("reject", 552)])
def test_clamd_size_limit_error_follows_the_oversize_policy(
        proxy_factory, recorded, small_clamd, policy, code):
    proxy = proxy_factory(clamav(small_clamd.address, oversize=policy))
    big = with_attachment("above clamd's limit", "data.bin", b"\x00\x01" * 100 * 1024)
    result = send(proxy, big)
    assert result.data.code == code, result.data
    if code == 250:
        [message] = recorded.wait_for(1)
        assert "CLAMAV_UNSCANNED=0" in message.header("X-Spam-Symbols")
    else:
        recorded.assert_no_messages(within=0.5)
    rows = log_rows(proxy.data_dir, 1)
    reasons = [r for n, _, r in logged_symbols(proxy.data_dir, rows[0][0])
               if n == "CLAMAV_UNSCANNED"]
    assert reasons and "StreamMaxLength" in reasons[0]
    assert_refused_as_virus(send(proxy, eicar_message("plain")))
    assert_still_serving(proxy, recorded, f"small after clamd limit {policy}")


def test_virus_copy_is_kept_with_keep_virus(proxy_factory, recorded, clamd):
    proxy = proxy_factory(clamav(clamd.address, keep_virus=True))
    content = eicar_message("base64")
    assert_refused_as_virus(send(proxy, content))
    [row] = log_rows(proxy.data_dir, 1)
    txid, action, reply, kept = row
    assert action == "reject" and reply.startswith("554 5.7.1 Virus found")
    copy = proxy.data_dir / "mail" / "virus" / f"{txid}.eml"
    assert kept == str(copy)
    assert copy.read_bytes() == content
    assert oct(copy.stat().st_mode & 0o777) == "0o640"
    symbols = logged_symbols(proxy.data_dir, txid)
    assert ("CLAMAV_VIRUS", 20.0, VIRUS_NAME) in symbols
    assert not list((proxy.data_dir / "mail" / "spam").iterdir())
    assert_still_serving(proxy, recorded)


def test_outgoing_mail_is_scanned_unless_switched_off(proxy_factory, recorded, clamd):
    proxy = proxy_factory(clamav(clamd.address))
    assert_refused_as_virus(send(proxy, eicar_message("zip"), sender="bob@example.com",
                                 relay=True))
    recorded.assert_no_messages(within=0.5)
    unscanned = proxy_factory(clamav(clamd.address, scan_outgoing=False))
    assert send(unscanned, eicar_message("plain"), sender="bob@example.com",
                relay=True).accepted
    recorded.wait_for(1)


def test_score_mode_only_adds_the_weight(proxy_factory, recorded, clamd):
    proxy = proxy_factory(
        {"filters": {"clamav": {"mode": "score", "address": clamd.address}},
         "scoring": {"thresholds": {"tag": 5, "quarantine": None, "reject": None}}})
    assert send(proxy, eicar_message("plain")).accepted
    [message] = recorded.wait_for(1)
    assert "CLAMAV_VIRUS=20" in message.header("X-Spam-Symbols")
    assert message.header("X-Spam-Flag") == "YES"


# --------------------------------------------------------------------------------------
# postwall analyze
# --------------------------------------------------------------------------------------


def analyze(tmp_path: Path, address: str, content: bytes) -> str:
    config = tmp_path / "postwall.yml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "local_domains": ["example.com"],
        "filters": {"clamav": {"mode": "block", "address": address, "timeout": 5}},
    }))
    message = tmp_path / "message.eml"
    message.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "analyze", "--config", str(config), str(message),
         "--from", SENDER, "--to", RCPT],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_analyze_shows_the_clamav_result(tmp_path, clamd, own_clamd):
    infected = analyze(tmp_path, clamd.address, eicar_message("zip"))
    assert "CLAMAV_VIRUS" in infected and VIRUS_NAME in infected
    assert "action: reject (blocked by CLAMAV_VIRUS)" in infected
    assert "reply: 554 5.7.1 Virus found: Test.EICAR.UNOFFICIAL" in infected
    clean = analyze(tmp_path, clamd.tcp_address, plain("clean"))
    assert "CLAMAV" not in clean and "action: deliver" in clean
    with own_clamd.stopped():
        down = analyze(tmp_path, own_clamd.address, plain("clean"))
    assert "CLAMAV_ERROR" in down and "reply: 451 4.7.1" in down
