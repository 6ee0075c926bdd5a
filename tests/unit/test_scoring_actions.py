"""Scoring, the choice of action and the rendering of headers (pure logic)."""

from __future__ import annotations

import ipaddress

from appliance import actions
from appliance.config.schema import Config, ScoringSettings
from appliance.context import ConnectionContext, Listener, TransactionContext
from appliance.scoring import action_for, total_score
from appliance.verdict import Action, Decision, Final, Reply, Symbol, SymbolSpec

DECLARED = {
    "A": SymbolSpec("A", 1.0, "a", group="g"),
    "B": SymbolSpec("B", 1.0, "b", group="g"),
    "C": SymbolSpec("C", 1.0, "c"),
    "SPAMLOVER": SymbolSpec("SPAMLOVER", 0.0, "lover"),
}


def tx(symbols=(), rcpts=("bob@example.com",), content=b"Subject: hi\r\n\r\nbody\r\n"):
    conn = ConnectionContext(ipaddress.ip_address("192.0.2.7"), 1234, Listener.INBOUND,
                             helo="mx.sender.example", esmtp=True)
    t = TransactionContext(connection=conn, mail_from="a@sender.example",
                           rcpt_tos=list(rcpts), symbols=list(symbols), content=content)
    return t


def test_group_caps_limit_positive_totals_only_for_capped_groups():
    symbols = [Symbol("A", 4, ""), Symbol("B", 4, ""), Symbol("C", 2, "")]
    assert total_score(symbols, DECLARED, {}) == 10
    assert total_score(symbols, DECLARED, {"g": 5}) == 7


def test_thresholds_choose_the_strongest_action():
    settings = ScoringSettings(thresholds={"tag": 5, "quarantine": 8, "discard": 10, "reject": 12})
    assert action_for(4.9, settings) is Action.DELIVER
    assert action_for(5, settings) is Action.TAG
    assert action_for(9, settings) is Action.QUARANTINE
    assert action_for(11, settings) is Action.DISCARD
    assert action_for(50, settings) is Action.REJECT


def test_unset_thresholds_are_skipped():
    settings = ScoringSettings(thresholds={"tag": 5, "quarantine": None, "reject": None})
    assert action_for(100, settings) is Action.TAG


def test_decide_honours_finals_whitelist_test_mode_and_spamlovers():
    config = Config()
    reject = Final(Decision.REJECT, Symbol("C", 1, ""), Reply(554, "5.7.1", "no"))
    t = tx([Symbol("C", 1, "")])
    t.final = reject
    outcome = actions.decide(t, config, DECLARED)
    assert outcome.action is Action.REJECT and str(outcome.reply) == "554 5.7.1 no"

    t = tx([Symbol("C", 20, "")])
    t.accepted_by = "address_lists"
    assert actions.decide(t, config, DECLARED).action is Action.DELIVER

    t = tx([Symbol("C", 20, "")])
    assert actions.decide(t, config, DECLARED).action is Action.REJECT
    assert actions.decide(t, Config(test_mode=True), DECLARED).action is Action.TAG

    t = tx([Symbol("C", 20, ""), Symbol("SPAMLOVER", 0, "bob@example.com")])
    assert actions.decide(t, config, DECLARED).action is Action.TAG
    t = tx([Symbol("C", 20, ""), Symbol("SPAMLOVER", 0, "bob@example.com")],
           rcpts=("bob@example.com", "eve@example.com"))
    assert actions.decide(t, config, DECLARED).action is Action.REJECT


def test_render_adds_headers_on_top_and_tags_the_subject_once():
    config = Config()
    t = tx([Symbol("C", 6, "why")], content=b"Subject: [SPAM] hi\r\nTo: b\r\n\r\nbody\r\n")
    outcome = actions.decide(t, config, DECLARED)
    rendered = actions.render(t, outcome, config, inbound=True)
    head, _, body = rendered.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert b"X-Spam-Status: Yes, score=6 required=5" in head
    assert b"X-Spam-Symbols: C=6" in head
    assert head.count(b"[SPAM]") == 1
    assert head.startswith(b"Received: from mx.sender.example ([192.0.2.7])")


def test_subject_prefix_is_added_when_there_is_no_subject():
    assert actions.tag_subject(b"To: b\r\n\r\nx\r\n", "[SPAM]") == (
        b"Subject: [SPAM]\r\nTo: b\r\n\r\nx\r\n")


def test_forged_headers_are_stripped_from_the_header_block_only():
    content = (b"X-Spam-Status: No\r\n\tcontinued\r\nx-postwall-id: forged\r\nSubject: s\r\n"
               b"\r\nX-Spam-Status: in the body stays\r\n")
    assert actions.strip_own_headers(content) == (
        b"Subject: s\r\n\r\nX-Spam-Status: in the body stays\r\n")


def test_long_symbol_lists_fold():
    folded = actions.fold([f"SYMBOL_NUMBER_{i}=1" for i in range(20)])
    assert all(len(line) <= 78 for line in folded.split("\r\n"))
    assert folded.count("\r\n\t") >= 3
