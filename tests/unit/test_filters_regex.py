"""bomb_re, bomb_subject_re, white_re and red_re on real messages."""

from __future__ import annotations

import ipaddress
import time
from email.message import EmailMessage

from appliance.config.schema import Config, WeightedPattern
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.filters.regex import RegexFilter
from appliance.filters.registry import is_red
from appliance.services import Services
from appliance.verdict import Decision, Stage, Verdict


def message(subject: str = "Hello", body: str = "Just text.", html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.net"
    msg["To"] = "user@corp.test"
    msg["Subject"] = subject
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def tx(content: bytes) -> TransactionContext:
    connection = ConnectionContext(ipaddress.ip_address("203.0.113.9"), 40000, Listener.INBOUND)
    return TransactionContext(connection=connection, mail_from="s@example.net", content=content)


def make(**patterns: list[tuple[str, float]] | int) -> RegexFilter:
    config = Config()
    settings = config.filters.regex
    for key, value in patterns.items():
        if isinstance(value, int):
            setattr(settings, key, value)
        else:
            setattr(settings, key, [WeightedPattern(pattern=p, weight=w) for p, w in value])
    return RegexFilter(settings, config.scoring.weights, config, Services.from_config(config))


async def check(flt: RegexFilter, content: bytes) -> Verdict:
    return await flt.check(tx(content))


async def test_no_patterns_no_findings() -> None:
    flt = make()
    assert flt.stage is Stage.DATA
    verdict = await check(flt, message())
    assert verdict.symbols == () and verdict.final is None


async def test_bomb_re_in_body_scores_pattern_weight() -> None:
    flt = make(bomb_re=[(r"cheap\s+pills", 2.0), (r"casino", 1.0), (r"absent", 5.0)])
    verdict = await check(flt, message(body="Buy CHEAP   pills and win at the casino!"))
    assert [(s.name, s.score) for s in verdict.symbols] == [("BOMB_RE", 6.0), ("BOMB_RE", 3.0)]
    assert "/cheap\\s+pills/" in verdict.symbols[0].reason
    assert "'CHEAP pills'" in verdict.symbols[0].reason


async def test_bomb_re_in_headers_and_html_text() -> None:
    flt = make(bomb_re=[(r"^X-Mailer: SpamBot", 1.0), (r"hidden offer", 1.0)])
    content = message(html="<p>a <b>hidden</b> offer</p>").replace(
        b"Subject:", b"X-Mailer: SpamBot 2.0\r\nSubject:", 1
    )
    verdict = await check(flt, content)
    assert len(verdict.symbols) == 2


async def test_bomb_re_sees_decoded_base64_body() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("Verify your acc\u00f6unt now", cte="base64")
    verdict = await check(make(bomb_re=[("acc\u00f6unt", 1.0)]), msg.as_bytes())
    assert [s.name for s in verdict.symbols] == ["BOMB_RE"]


async def test_bomb_subject_on_decoded_subject() -> None:
    flt = make(bomb_subject_re=[(r"v[i1]agra", 1.5)])
    raw = b"Subject: =?utf-8?B?Q2hlYXAgVjFBR1JBIHRvZGF5?=\r\n\r\nbody\r\n"  # Cheap V1AGRA today
    verdict = await check(flt, raw)
    (symbol,) = verdict.symbols
    assert symbol.name == "BOMB_SUBJECT" and symbol.score == 4.5
    assert "V1AGRA" in symbol.reason
    # bomb_subject_re looks at the subject only
    assert (await check(flt, message(body="viagra in the body"))).symbols == ()


async def test_white_re_accepts_and_keeps_other_findings() -> None:
    flt = make(white_re=[(r"ticket #\d+", 1.0)], bomb_re=[(r"urgent", 1.0)])
    verdict = await check(flt, message(body="URGENT: ticket #1234 updated"))
    assert verdict.final is not None and verdict.final.decision is Decision.ACCEPT
    assert verdict.final.symbol.name == "WHITE_RE" and verdict.final.symbol.score < 0
    assert [s.name for s in verdict.symbols] == ["BOMB_RE"]


async def test_red_re_marks_mail_red_with_zero_score() -> None:
    flt = make(red_re=[(r"^auto-submitted: auto-replied", 1.0), (r"out of office", 1.0)])
    content = message(body="I am out of office").replace(
        b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:", 1
    )
    verdict = await check(flt, content)
    assert [(s.name, s.score) for s in verdict.symbols] == [("RED_RE", 0.0)]
    assert is_red(verdict.symbols)


async def test_scanned_text_is_bounded() -> None:
    body = "a" * 5000 + " needle"
    flt = make(bomb_re=[("needle", 1.0)], max_scan_bytes=2048)
    assert (await check(flt, message(body=body))).symbols == ()
    wide = make(bomb_re=[("needle", 1.0)], max_scan_bytes=8192)
    assert len((await check(wide, message(body=body))).symbols) == 1


async def test_huge_body_is_scanned_only_up_to_the_bound() -> None:
    # A pattern that scans to the end of the text on every attempt (quadratic in its
    # length): bounded text keeps it cheap, a 4 MiB body would not be.
    flt = make(bomb_re=[(r"a[^\n]*zzz", 1.0)], max_scan_bytes=4096)
    started = time.monotonic()
    verdict = await check(flt, message(body="a" * 4 * 1024 * 1024))
    assert verdict.symbols == ()
    assert time.monotonic() - started < 1.0


async def test_garbage_message_does_not_raise() -> None:
    flt = make(bomb_re=[("x", 1.0)], bomb_subject_re=[("x", 1.0)], white_re=[("zzz", 1.0)])
    raw = b"Subject: \xff\xfe\x00\r\nContent-Type: multipart/mixed\r\n\r\n\x00\x80junk"
    verdict = await check(flt, raw)
    assert verdict.final is None


def test_pattern_set_reports_every_matching_rule_and_falls_back_for_lookaround():
    from appliance.patterns import PatternSet

    patterns = PatternSet([r"cheap\s+pills", r"win(?=ner)", r"(\w)\1{3}", r"^subject: offer"])
    assert patterns.fallback == (1, 2)  # lookahead and backreference need Python's re
    text = "Subject: OFFER\nCHEAP  pills for the winner: aaaa"
    found = patterns.search_all([text])
    assert [index for index, _ in found] == [0, 1, 2, 3]
    assert found[0][1].group(0) == "CHEAP  pills"
    assert patterns.search_all(["nothing to see"]) == []
    assert not PatternSet([])
