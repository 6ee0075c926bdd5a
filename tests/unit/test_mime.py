"""MIME helpers against real and hostile bytes: nothing may raise, everything is bounded."""

from __future__ import annotations

import base64
import time
from email.message import EmailMessage

import pytest

from appliance import mime


def build(subject: str = "Hello", body: str = "plain body") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "bob@example.com"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def nested(depth: int) -> bytes:
    """`depth` multiparts, each inside the previous one, with a text leaf at the bottom."""
    head = b"From: a@example.org\r\nSubject: deep\r\n"
    for i in range(depth):
        head += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    head += b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    tail = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + tail


# --- parse -----------------------------------------------------------------------------


def test_parse_round_trips_a_normal_message() -> None:
    msg = mime.parse(build().as_bytes())
    assert mime.decoded_header(msg, "Subject") == "Hello"
    assert "plain body" in mime.text_content(msg, 1000)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00\x00",
        b"garbage without headers\r\n\r\n\xff\xfe",
        b"Subject: \xff\xfe\x00 junk\r\nContent-Type: multipart/mixed\r\n\r\nno boundary",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n"
        b"\r\nunterminated part, no closing boundary",
        b"Content-Type: message/rfc822\r\n\r\n\x00\x80\x81 not a message",
        b"From: \x80\x81\x82@\xff\r\n" * 200 + b"\r\n" + b"\x00" * 1000,
        b"Content-Type: text/plain; charset=\"no-such-charset\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64???\r\n",
    ],
)
def test_parse_survives_garbage(raw: bytes) -> None:
    msg = mime.parse(raw)
    mime.decoded_header(msg, "Subject")
    mime.decoded_header(msg, "From")
    mime.headers_text(msg, 10_000)
    parts = list(mime.iter_parts(msg, 50, 1000))
    assert parts and parts[0].depth == 0
    mime.text_content(msg, 10_000)
    for info in parts:
        mime.attachment_payload(info.part)


def test_unterminated_boundary_keeps_the_text() -> None:
    raw = (
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nsecond part, never closed\r\n"
    )
    msg = mime.parse(raw)
    assert msg.defects  # recorded, not raised
    text = mime.text_content(msg, 1000)
    assert "first part" in text and "second part" in text


def test_nul_bytes_and_8bit_junk_in_body() -> None:
    raw = b"Subject: nul\r\nContent-Type: text/plain\r\n\r\nbefore\x00after \xff\xfe\x80 end\r\n"
    text = mime.text_content(mime.parse(raw), 1000)
    assert "before" in text and "after" in text and "\x00" not in text


def test_thousand_deep_nesting_does_not_recurse() -> None:
    started = time.monotonic()
    msg = mime.parse(nested(1000))
    parts = list(mime.iter_parts(msg, max_depth=50, max_parts=10_000))
    assert time.monotonic() - started < 2.0
    assert any(p.limit_exceeded is mime.Limit.DEPTH for p in parts)
    assert max(p.depth for p in parts) <= 50
    mime.text_content(msg, 1000)


def test_iter_parts_explicit_stack_beyond_recursion_limit() -> None:
    # Build the tree directly (the parser is not involved): 3000 levels deep.
    from email.message import Message

    root = Message()
    root["Content-Type"] = "multipart/mixed"
    current = root
    for _ in range(3000):
        child = Message()
        child["Content-Type"] = "multipart/mixed"
        current.set_payload([child])
        current = child
    parts = list(mime.iter_parts(root, max_depth=5000, max_parts=10_000))
    assert len(parts) == 3001
    assert parts[-1].depth == 3000
    assert all(p.limit_exceeded is None for p in parts)


def test_moderate_nesting_is_parsed_fully() -> None:
    msg = mime.parse(nested(30))
    assert not mime.too_deep(msg)
    parts = list(mime.iter_parts(msg, 50, 1000))
    assert parts[-1].depth == 30 and parts[-1].content_type == "text/plain"
    assert all(p.limit_exceeded is None for p in parts)


def test_iter_parts_depth_limit_flags_the_container() -> None:
    parts = list(mime.iter_parts(mime.parse(nested(10)), max_depth=3, max_parts=1000))
    assert max(p.depth for p in parts) == 3
    assert [p.limit_exceeded for p in parts if p.depth == 3] == [mime.Limit.DEPTH]


def test_iter_parts_part_limit_stops_and_flags() -> None:
    msg = build()
    for i in range(20):
        msg.add_attachment(b"x", maintype="application", subtype="octet-stream",
                           filename=f"f{i}.bin")
    parts = list(mime.iter_parts(mime.parse(msg.as_bytes()), max_depth=50, max_parts=5))
    assert len(parts) == 5
    assert parts[-1].limit_exceeded is mime.Limit.PARTS
    assert all(p.limit_exceeded is None for p in parts[:-1])


def test_iter_parts_exact_count_is_not_a_limit() -> None:
    msg = build()
    msg.add_attachment(b"x", maintype="application", subtype="octet-stream", filename="a.bin")
    parsed = mime.parse(msg.as_bytes())
    count = len(list(mime.iter_parts(parsed, 50, 1000)))
    parts = list(mime.iter_parts(parsed, 50, count))
    assert all(p.limit_exceeded is None for p in parts)


def test_iter_parts_reports_document_order_and_types() -> None:
    msg = build()
    msg.add_alternative("<p>html</p>", subtype="html")
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="doc.pdf")
    parts = list(mime.iter_parts(mime.parse(msg.as_bytes()), 50, 1000))
    assert [(p.depth, p.content_type, p.filename) for p in parts] == [
        (0, "multipart/mixed", None),
        (1, "multipart/alternative", None),
        (2, "text/plain", None),
        (2, "text/html", None),
        (1, "application/pdf", "doc.pdf"),
    ]


def test_attached_message_is_walked() -> None:
    inner = build(subject="inner")
    inner.add_attachment(b"MZ", maintype="application", subtype="octet-stream",
                         filename="inner.exe")
    outer = build(subject="outer")
    outer.add_attachment(inner)
    parts = list(mime.iter_parts(mime.parse(outer.as_bytes()), 50, 1000))
    assert "inner.exe" in [p.filename for p in parts]


# --- filenames -------------------------------------------------------------------------


def test_filename_rfc2231() -> None:
    raw = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.exe\r\n\r\nx"
    )
    (info,) = mime.iter_parts(mime.parse(raw), 50, 1000)
    assert info.filename == "r\u00e9sum\u00e9.exe"


def test_filename_rfc2231_continuations_and_bad_charset() -> None:
    raw = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*0*=bogus-cs''abc%FF; filename*1=def.scr\r\n"
        b"\r\nx"
    )
    (info,) = mime.iter_parts(mime.parse(raw), 50, 1000)
    assert info.filename is not None and info.filename.endswith("def.scr")


def test_filename_rfc2047_in_quoted_name() -> None:
    raw = (
        b"Content-Type: application/octet-stream; name=\"=?utf-8?B?cmVwb3J0LmV4ZQ==?=\"\r\n"
        b"\r\nx"
    )
    (info,) = mime.iter_parts(mime.parse(raw), 50, 1000)
    assert info.filename == "report.exe"


def test_filename_with_8bit_junk_and_nul() -> None:
    raw = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"\xff\xfeevil.exe\x00.pdf\"\r\n\r\nx"
    )
    (info,) = mime.iter_parts(mime.parse(raw), 50, 1000)
    assert info.filename is not None
    assert info.filename.split("\x00")[0].endswith("evil.exe")


# --- headers ---------------------------------------------------------------------------


def test_decoded_header_rfc2047_words() -> None:
    raw = (
        b"Subject: =?UTF-8?B?R3LDvMOfZQ==?= =?ISO-8859-1?Q?_aus_K=F6ln?= and plain\r\n\r\nx"
    )
    expected = "Gr\u00fc\u00dfe aus K\u00f6ln and plain"
    assert mime.decoded_header(mime.parse(raw), "Subject") == expected


def test_decoded_header_folded() -> None:
    raw = b"Subject: first\r\n second\r\n\tthird\r\n\r\nx"
    assert mime.decoded_header(mime.parse(raw), "subject") == "first second\tthird"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Subject: =?x-no-such?Q?caf=E9?=\r\n\r\n", "caf"),  # unknown charset: no crash
        (b"Subject: =?utf-8?B?!!!?=\r\n\r\n", ""),  # broken base64
        (b"Subject: =?utf-8?Q?=FF=FE?=\r\n\r\n", "\ufffd"),  # invalid UTF-8 in a word
        (b"Subject: caf\xc3\xa9 raw utf-8\r\n\r\n", "caf\u00e9 raw utf-8"),
        (b"Subject: caf\xe9 raw latin-1\r\n\r\n", "caf\u00e9 raw latin-1"),
        (b"Subject: nul\x00 inside\r\n\r\n", "nul inside"),
        (b"Subject: =?base64_codec?B?eHg=?=\r\n\r\n", "xx"),  # not a text codec
        (b"Subject: =?utf-8*en?Q?lang_tag?=\r\n\r\n", "lang tag"),
    ],
)
def test_decoded_header_tolerates_bad_input(raw: bytes, expected: str) -> None:
    value = mime.decoded_header(mime.parse(raw), "Subject")
    assert expected in value
    assert "\x00" not in value


def test_decoded_header_missing_is_empty() -> None:
    assert mime.decoded_header(mime.parse(b"From: a@b\r\n\r\nx"), "Subject") == ""


def test_headers_text_is_bounded() -> None:
    raw = b"".join(b"X-Junk-%d: %s\r\n" % (i, b"y" * 100) for i in range(1000)) + b"\r\nbody"
    text = mime.headers_text(mime.parse(raw), 2048)
    assert len(text) <= 2048 and text.startswith("X-Junk-0: ")


# --- payloads and text -----------------------------------------------------------------


def test_attachment_payload_base64_and_qp() -> None:
    data = bytes(range(256)) * 4
    msg = build()
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename="b.bin")
    parts = list(mime.iter_parts(mime.parse(msg.as_bytes()), 50, 1000))
    assert mime.attachment_payload(parts[-1].part) == data
    assert mime.attachment_payload(parts[-1].part, 10) == data[:10]
    qp = mime.parse(
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft break"
    )
    assert mime.attachment_payload(qp) == "café soft break".encode()


def test_attachment_payload_broken_base64() -> None:
    encoded = base64.b64encode(b"hello world, this is data").decode()
    raw = (
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + encoded[:12] + "\r\n!!*-.;!!\r\n" + encoded[12:-3]  # junk, missing padding
    ).encode()
    payload = mime.attachment_payload(mime.parse(raw))
    assert payload.startswith(b"hello world")


def test_text_content_strips_html_and_decodes_charset() -> None:
    raw = (
        b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
        b"<html><head><style>p {color: red}</style><script>var spam = 1;</script></head>"
        b"<body><p>Cheap&nbsp;<b>pills</b> f\xfcr you</p></body></html>"
    )
    text = mime.text_content(mime.parse(raw), 1000)
    assert text.split() == ["Cheap", "pills", "f\u00fcr", "you"]
    assert "color" not in text and "var spam" not in text and "<" not in text


def test_text_content_unterminated_script_is_linear() -> None:
    hostile = b"<script>" * 50_000 + b"x" * 100_000
    raw = b"Content-Type: text/html\r\n\r\n" + hostile
    started = time.monotonic()
    mime.text_content(mime.parse(raw), 512_000)
    assert time.monotonic() - started < 1.0


def test_text_content_is_bounded_and_skips_attachments() -> None:
    msg = build(body="word " * 100_000)
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream",
                       filename="x.bin")
    text = mime.text_content(mime.parse(msg.as_bytes()), 1000)
    assert len(text) <= 1000 and text.startswith("word")
    assert "binary" not in text


def test_text_content_bad_charset_falls_back() -> None:
    raw = b"Content-Type: text/plain; charset=\"x-bogus\"\r\n\r\nhello \xff world"
    assert "hello" in mime.text_content(mime.parse(raw), 1000)
