"""The safe view of kept mail copes with whatever arrived: broken MIME, unknown charsets,
undecodable headers, hostile HTML."""

from __future__ import annotations

import pytest

from webui import mailview


@pytest.mark.parametrize("content", [
    b"",
    b"no headers at all, just text\r\n",
    b"Subject: =?unknown-charset?q?x?=\r\nFrom: \xff\xfe <a@b>\r\n\r\nbody \xff\r\n",
    b"Content-Type: multipart/mixed; boundary=\"never\"\r\n\r\nno parts here\r\n",
    b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n\xe4\xf6\xfc\r\n",
    b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
    b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
    + b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n" * 50 + b"--a--\r\n",
])
def test_malformed_mail_is_shown_without_error(content: bytes) -> None:
    safe = mailview.parse(content)
    assert isinstance(safe.headers, list)
    for part in safe.parts:
        assert part.text is None or isinstance(part.text, str)


def test_html_becomes_text_with_link_targets_and_without_scripts() -> None:
    text = mailview.html_to_text(
        "<html><head><title>t</title><style>b{}</style><script>steal()</script></head>"
        "<body><h1>Invoice</h1><p>Pay <a href='https://evil.example/x'>here</a>"
        "<img alt='logo' src='https://evil.example/p.gif'></p><ul><li>one</li><li>two</li>"
        "</ul></body></html>"
    )
    assert "steal" not in text and "b{}" not in text
    assert "Invoice" in text and "Pay here [https://evil.example/x]" in text
    assert "[image: logo]" in text
    assert "one\n" in text and "two" in text


def test_long_text_is_cut() -> None:
    body = b"x" * (mailview.MAX_TEXT_CHARS + 10)
    safe = mailview.parse(b"Content-Type: text/plain\r\n\r\n" + body)
    [part] = safe.texts
    assert part.truncated and len(part.text) == mailview.MAX_TEXT_CHARS
