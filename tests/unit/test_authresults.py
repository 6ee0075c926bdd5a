"""The Authentication-Results header: rendering (RFC 8601) and removing forged copies."""

from __future__ import annotations

import email
import ipaddress

from appliance import actions
from appliance.authresults import (
    AuthResult,
    AuthResults,
    DKIMResult,
    DMARCResult,
    SPFResult,
    authserv_id_of,
    header_value,
    pvalue,
    value,
)
from appliance.config.schema import Config
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.verdict import Action


def full_results() -> AuthResults:
    return AuthResults(
        spf=SPFResult(AuthResult.PASS, "mailfrom", "example.org", "bounce@example.org",
                      "sender SPF authorized"),
        dkim=[
            DKIMResult(AuthResult.PASS, "example.org", "s1", "AbC+/9xy", "rsa-sha256"),
            DKIMResult(AuthResult.FAIL, "esp.test", "k", "zz", "rsa-sha256",
                       "body hash mismatch"),
        ],
        dkim_checked=True,
        dmarc=DMARCResult(AuthResult.PASS, "example.org", "reject", "", "DKIM aligned"),
    )


def test_header_value_lists_every_result() -> None:
    text = header_value("mx.example.com", full_results())
    lines = text.split("\r\n\t")
    assert lines[0] == "mx.example.com;"
    assert lines[1] == ('spf=pass reason="sender SPF authorized" '
                        'smtp.mailfrom=bounce@example.org;')
    assert lines[2] == ('dkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256 '
                        'header.b="AbC+/9xy";')
    assert lines[3].startswith('dkim=fail reason="body hash mismatch" header.d=esp.test')
    assert lines[4] == ('dmarc=pass (p=reject dis=none) reason="DKIM aligned" '
                        'header.from=example.org')


def test_no_method_ran_says_none() -> None:
    assert header_value("mx.example.com", AuthResults()) == "mx.example.com; none"
    checked = AuthResults(dkim_checked=True)
    assert header_value("mx.example.com", checked) == "mx.example.com;\r\n\tdkim=none"


def test_helo_identity_and_hostile_text_are_quoted() -> None:
    auth = AuthResults(spf=SPFResult(AuthResult.FAIL, "helo", "bad host", "bad host",
                                     'says "no"\r\nX-Injected: yes (\\)'))
    text = header_value("mx.example.com", auth)
    assert "\r\nX-Injected" not in text and "\n" not in text.replace("\r\n\t", "")
    assert 'reason="says \\"no\\" X-Injected: yes (\\\\)"' in text
    assert 'smtp.helo="bad host"' in text
    # A parser of the whole field sees one header with the same authserv-id.
    parsed = email.message_from_string(f"Authentication-Results: {text}\r\n\r\n")
    assert len(parsed.get_all("Authentication-Results")) == 1


def test_value_and_pvalue() -> None:
    assert value("rsa-sha256") == "rsa-sha256"
    assert value("a b") == '"a b"'
    assert value("x=y") == '"x=y"'
    assert pvalue("user+tag@example.org") == "user+tag@example.org"
    assert pvalue("example.org") == "example.org"
    assert pvalue('"odd local"@example.org') == '"\\"odd local\\"@example.org"'


def test_authserv_id_of() -> None:
    assert authserv_id_of(" mx.example.com; spf=pass") == "mx.example.com"
    assert authserv_id_of("MX.Example.COM 1; none") == "mx.example.com"
    assert authserv_id_of(" (comment (nested)) mx.example.com;") == "mx.example.com"
    assert authserv_id_of('"mx.example.com"; none') == "mx.example.com"
    assert authserv_id_of("\r\n\tmx.example.com;") == "mx.example.com"
    assert authserv_id_of(";") == ""


MESSAGE = (
    b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=forged@bank.test\r\n"
    b"Authentication-Results: (sneaky)\r\n\t\"MX.example.com\"; dkim=pass\r\n"
    b"Authentication-Results: upstream.example.net; spf=fail\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.com; in the body stays\r\n"
)


def test_forged_results_with_our_id_are_stripped_others_kept() -> None:
    cleaned = actions.strip_own_headers(MESSAGE, "mx.example.com")
    assert cleaned == (
        b"Authentication-Results: upstream.example.net; spf=fail\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.com; in the body stays\r\n"
    )
    assert actions.strip_own_headers(MESSAGE) == MESSAGE  # no authserv-id: untouched


def test_render_adds_our_header_on_inbound_only() -> None:
    config = Config(smtp={"hostname": "mx.example.com"})
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.1"), 25, Listener.INBOUND)
    tx = TransactionContext(connection=conn, mail_from="a@example.org",
                            rcpt_tos=["b@example.com"], content=MESSAGE)
    tx.auth = full_results()
    outcome = actions.Outcome(Action.DELIVER, 0.0, None, "score 0")
    rendered = actions.render(tx, outcome, config, inbound=True)
    parsed = email.message_from_bytes(rendered)
    fields = parsed.get_all("Authentication-Results")
    ours = [f for f in fields if authserv_id_of(f) == "mx.example.com"]
    assert len(ours) == 1 and "dmarc=pass" in ours[0]
    assert any("upstream.example.net" in f for f in fields)
    conn.listener = Listener.RELAY
    relayed = actions.render(tx, outcome, config, inbound=False)
    assert relayed.endswith(MESSAGE)
    assert b"dmarc=pass" not in relayed
