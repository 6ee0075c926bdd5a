"""Attachment blocking by extension level, inside zips too, and zip bombs that must end
quickly: every test here is bounded well under a second."""

from __future__ import annotations

import io
import ipaddress
import time
import zipfile
from email.message import EmailMessage

import pytest

from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.archives import ArchiveLimits, IssueKind, inspect_zip
from appliance.filters.attachments import AttachmentFilter, candidate_names
from appliance.services import Services
from appliance.verdict import Decision, Reply, Stage, Verdict

# --- builders --------------------------------------------------------------------------


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def mark_encrypted(data: bytes) -> bytes:
    """Set the 'encrypted' flag on every entry (zipfile cannot write encrypted zips)."""
    out = bytearray(data)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(signature)
        while pos >= 0:
            out[pos + flag_offset] |= 0x01
            pos = out.find(signature, pos + 4)
    return bytes(out)


def nested_bomb(levels: int, copies: int, payload: int) -> bytes:
    """42.zip-style: `levels` of zips, each holding `copies` of the one below; the
    bottom holds `payload` zero octets."""
    data = zip_of({"payload.bin": bytes(payload)})
    for level in range(levels):
        data = zip_of({f"l{level}-{i}.zip": data for i in range(copies)})
    return data


def message(*attachments: tuple[str, bytes], subtype: str = "octet-stream") -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.net"
    msg["To"] = "user@corp.test"
    msg["Subject"] = "files"
    msg.set_content("see attached")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype=subtype, filename=name)
    return msg.as_bytes()


def tx(content: bytes) -> TransactionContext:
    connection = ConnectionContext(ipaddress.ip_address("203.0.113.9"), 40000, Listener.INBOUND)
    return TransactionContext(connection=connection, mail_from="s@example.net", content=content)


def make(config: Config | None = None) -> AttachmentFilter:
    config = config or Config()
    settings = config.filters.attachments
    return AttachmentFilter(settings, config.scoring.weights, config, Services.from_config(config))


async def check(content: bytes, config: Config | None = None) -> Verdict:
    started = time.monotonic()
    verdict = await make(config).check(tx(content))
    assert time.monotonic() - started < 1.0
    return verdict


def names(verdict: Verdict) -> set[str]:
    found = {s.name for s in verdict.symbols}
    if verdict.final is not None:
        found.add(verdict.final.symbol.name)
    return found


def level(n: int) -> Config:
    config = Config()
    config.filters.attachments.level = n
    return config


# --- extensions ------------------------------------------------------------------------


async def test_exe_attachment_is_rejected() -> None:
    verdict = await check(message(("invoice.exe", b"MZ\x90\x00")))
    assert make().stage is Stage.DATA
    assert verdict.final is not None and verdict.final.decision is Decision.REJECT
    assert verdict.final.reply == Reply(554, "5.7.1", "Attachment type not allowed: invoice.exe")
    assert verdict.final.symbol.name == "BAD_ATTACHMENT"


@pytest.mark.parametrize(
    ("filename", "lvl", "blocked"),
    [
        ("a.exe", 1, True),
        ("a.EXE", 1, True),
        ("a.pdf.exe", 1, True),
        ("a.exe.pdf", 3, False),
        ("a.exe.", 1, True),  # Windows drops trailing dots
        ("a.exe . ", 1, True),  # and spaces
        ("a.scr", 1, True),
        ("a.vbs", 1, True),
        ("a.msi", 1, False),
        ("a.msi", 2, True),
        ("a.chm", 2, True),
        ("a.rar", 2, False),
        ("a.rar", 3, True),
        ("a.iso", 3, True),
        ("a.exe", 0, False),
        ("report.pdf", 3, False),
        ("nodot", 3, False),
        ("exe", 3, False),
        ("a\u202egpj.exe", 1, True),  # right-to-left override shows "a.exe" as "aexe.jpg"
    ],
)
async def test_extension_levels(filename: str, lvl: int, blocked: bool) -> None:
    verdict = await check(message((filename, b"data")), level(lvl))
    assert ("BAD_ATTACHMENT" in names(verdict)) is blocked


async def test_rfc2231_encoded_exe_name() -> None:
    raw = (
        b"From: s@example.net\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf.exe\r\n\r\nMZ\r\n"
        b"--b--\r\n"
    )
    verdict = await check(raw)
    assert verdict.final is not None
    assert verdict.final.reply is not None
    assert verdict.final.reply.text == "Attachment type not allowed: r?sum?.pdf.exe"


async def test_nul_in_filename_is_seen_both_ways() -> None:
    assert candidate_names("evil.exe\x00.pdf") == ["evil.exe", "evil.exe.pdf"]
    raw = (
        b"From: s@example.net\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: application/pdf; name=\"evil.exe\x00.pdf\"\r\n\r\nx\r\n--b--\r\n"
    )
    verdict = await check(raw)
    assert "BAD_ATTACHMENT" in names(verdict)


async def test_clean_message_has_no_findings() -> None:
    verdict = await check(message(("report.pdf", b"%PDF-1.4"), ("photo.jpg", b"\xff\xd8")))
    assert verdict.final is None and verdict.symbols == ()


async def test_configured_alternation_is_used() -> None:
    config = level(1)
    config.filters.attachments.bad_attach_l1 = "foo|ba[rz]"
    assert "BAD_ATTACHMENT" in names(await check(message(("x.baz", b"1")), config))
    assert "BAD_ATTACHMENT" not in names(await check(message(("x.exe", b"1")), config))


# --- inside archives -------------------------------------------------------------------


async def test_exe_inside_zip_is_rejected() -> None:
    archive = zip_of({"readme.txt": b"hi", "docs/setup.exe": b"MZ"})
    verdict = await check(message(("files.zip", archive), subtype="zip"))
    assert verdict.final is not None and verdict.final.reply is not None
    assert verdict.final.reply.text == "Attachment type not allowed: files.zip/docs/setup.exe"


async def test_exe_inside_nested_zip_is_rejected() -> None:
    inner = zip_of({"payload.js": b"alert(1)"})
    outer = zip_of({"inner.zip": inner, "a.txt": b"x"})
    verdict = await check(message(("outer.zip", outer)))
    assert verdict.final is not None
    assert "outer.zip/inner.zip/payload.js" in verdict.final.symbol.reason


async def test_zip_found_by_content_under_another_name() -> None:
    archive = zip_of({"run.bat": b"@echo off"})
    verdict = await check(message(("data.bin", archive)))
    assert "BAD_ATTACHMENT" in names(verdict)


async def test_archives_not_scanned_when_disabled() -> None:
    config = Config()
    config.filters.attachments.scan_archives = False
    verdict = await check(message(("files.zip", zip_of({"x.exe": b"MZ"}))), config)
    assert verdict.final is None


async def test_nested_zip_beyond_depth_is_a_limit() -> None:
    data = zip_of({"x.exe": b"MZ"})
    for i in range(3):
        data = zip_of({f"n{i}.zip": data})
    config = Config()
    config.filters.attachments.max_archive_depth = 1
    verdict = await check(message(("deep.zip", data)), config)
    assert names(verdict) == {"ARCHIVE_LIMIT"}


async def test_encrypted_zip() -> None:
    archive = mark_encrypted(zip_of({"secret.doc": b"x" * 100}, zipfile.ZIP_STORED))
    verdict = await check(message(("secret.zip", archive)))
    assert names(verdict) == {"ARCHIVE_ENCRYPTED"}
    encrypted_exe = mark_encrypted(zip_of({"evil.exe": b"MZ" * 50}, zipfile.ZIP_STORED))
    verdict = await check(message(("evil.zip", encrypted_exe)))
    assert names(verdict) == {"ARCHIVE_ENCRYPTED", "BAD_ATTACHMENT"}  # names are not secret


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + b"\x00" * 100,  # a header and nothing else
        zip_of({"a.txt": b"hello" * 1000})[:-30],  # truncated: no end record
        b"this is not a zip at all",
        b"PK\x05\x06" + b"\xff" * 18,  # an end record pointing nowhere
    ],
)
async def test_corrupt_zip_is_a_finding_not_an_exception(data: bytes) -> None:
    verdict = await check(message(("broken.zip", data)))
    assert verdict.final is None
    assert names(verdict) == {"ARCHIVE_CORRUPT"}


async def test_corrupt_nested_zip_member() -> None:
    inner = zip_of({"a.txt": b"abc" * 1000})
    damaged = inner[:40] + b"\xff" * 20 + inner[60:]
    verdict = await check(message(("outer.zip", zip_of({"inner.zip": damaged}))))
    assert names(verdict) == {"ARCHIVE_CORRUPT"}


async def test_huge_repetitive_member_is_a_bomb_without_unpacking() -> None:
    archive = zip_of({"zeros.txt": bytes(20 * 1024 * 1024)})  # 20 MiB -> about 20 KiB
    config = Config()
    config.filters.attachments.max_archive_bytes = 1024 * 1024
    verdict = await check(message(("big.zip", archive)), config)
    assert names(verdict) == {"ARCHIVE_BOMB"}
    (symbol,) = verdict.symbols
    assert symbol.score > 0 and "declares" in symbol.reason


@pytest.fixture(scope="module")
def ten_level_bomb() -> bytes:
    return nested_bomb(levels=10, copies=10, payload=2 * 1024 * 1024)


async def test_ten_level_nested_bomb_ends_quickly(ten_level_bomb: bytes) -> None:
    verdict = await check(message(("bomb.zip", ten_level_bomb)))
    found = names(verdict)
    assert found & {"ARCHIVE_BOMB", "ARCHIVE_LIMIT"}
    assert "BAD_ATTACHMENT" not in found


async def test_ten_level_nested_bomb_with_deep_limits_still_ends(ten_level_bomb: bytes) -> None:
    config = Config()
    config.filters.attachments.max_archive_depth = 10
    config.filters.attachments.max_archives = 1000
    config.filters.attachments.max_archive_bytes = 1024 * 1024
    verdict = await check(message(("bomb.zip", ten_level_bomb)), config)
    assert names(verdict) & {"ARCHIVE_BOMB", "ARCHIVE_LIMIT"}


def test_single_chain_bomb_reaches_the_bottom_and_flags_it() -> None:
    data = nested_bomb(levels=10, copies=1, payload=8 * 1024 * 1024)
    started = time.monotonic()
    report = inspect_zip(data, "chain.zip", ArchiveLimits(max_depth=10, max_bytes=2 * 1024**2))
    assert time.monotonic() - started < 0.5
    assert IssueKind.BOMB in report.kinds()
    assert report.archives == 11


def test_too_many_members_lists_only_the_first() -> None:
    members = {"setup.exe": b"MZ"} | {f"f{i}.txt": b"" for i in range(3000)}
    data = zip_of(members, zipfile.ZIP_STORED)
    started = time.monotonic()
    report = inspect_zip(data, "many.zip", ArchiveLimits(max_members=100))
    assert time.monotonic() - started < 0.5
    assert IssueKind.LIMIT in report.kinds()
    assert len(report.names) == 100
    assert report.names[0] == "many.zip/setup.exe"


def test_overlapping_entries_bomb_is_seen_from_the_directory() -> None:
    """Fifield's 'better zip bomb': many directory entries share one compressed body."""
    data = bytearray(zip_of({"k.txt": bytes(1024 * 1024)}))
    eocd = data.rfind(b"PK\x05\x06")
    cd_start = int.from_bytes(data[eocd + 16 : eocd + 20], "little")
    entry = bytes(data[cd_start:eocd])
    copies = 200
    directory = entry * copies
    end = bytearray(data[eocd:])
    end[8:10] = end[10:12] = copies.to_bytes(2, "little")
    end[12:16] = len(directory).to_bytes(4, "little")
    forged = bytes(data[:cd_start]) + directory + bytes(end)
    report = inspect_zip(forged, "overlap.zip", ArchiveLimits(max_bytes=10 * 1024 * 1024))
    assert IssueKind.BOMB in report.kinds()


def test_archive_limit_on_archive_count() -> None:
    data = nested_bomb(levels=3, copies=16, payload=1000)
    report = inspect_zip(data, "42.zip", ArchiveLimits(max_depth=3, max_archives=20))
    assert report.archives == 20
    assert any("more than 20 archives" in str(issue) for issue in report.issues)


# --- MIME structure limits -------------------------------------------------------------


async def test_mime_too_deep() -> None:
    head = b"From: a@example.net\r\n"
    for i in range(20):
        head += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    raw = head + b"Content-Type: text/plain\r\n\r\nx\r\n"
    config = Config()
    config.filters.attachments.max_mime_depth = 5
    verdict = await check(raw, config)
    assert names(verdict) == {"MIME_TOO_DEEP"}


async def test_thousand_deep_mime_ends_quickly() -> None:
    head = b"From: a@example.net\r\n"
    for i in range(1000):
        head += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    started = time.monotonic()
    verdict = await make().check(tx(head + b"Content-Type: text/plain\r\n\r\nx\r\n"))
    assert time.monotonic() - started < 2.0
    assert "MIME_TOO_DEEP" in names(verdict)


async def test_mime_too_many_parts() -> None:
    config = Config()
    config.filters.attachments.max_mime_parts = 10
    verdict = await check(message(*[(f"f{i}.txt", b"x") for i in range(20)]), config)
    assert names(verdict) == {"MIME_TOO_MANY_PARTS"}
