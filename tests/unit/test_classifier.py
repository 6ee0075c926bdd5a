"""Tokenizer, combiner, token table, training ledger and learner (real SQLite files)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from appliance import mime
from appliance.classifier.digest import message_digest
from appliance.classifier.learner import Learner, LearnJob
from appliance.classifier.maturing import MaturingSettings, corrected_weight, leave_one_out_cells
from appliance.classifier.model import (
    ModelSettings,
    chi2q,
    classify,
    combine,
    log_chi2q,
    strongest_clues,
    token_probability,
)
from appliance.classifier.table import TokenTable
from appliance.classifier.tokenizer import (
    TokenizerSettings,
    client_network_tokens,
    is_pair,
    registered_domain,
    tokenize,
)
from appliance.storage.facade import Storage
from appliance.storage.training import LedgerEntry


def message(subject: str = "Cheap watches", body: str = "Buy cheap replica watches now",
            sender: str = "Spam King <king@spam.example>", html: str | None = None,
            attachment: tuple[str, bytes] | None = None, extra: dict[str, str] | None = None
            ) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "bob@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((subject, body)))}@mailer.spam.example>"
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="pdf",
                           filename=attachment[0])
    return msg.as_bytes().replace(b"\n", b"\r\n")


def tokens_of(content: bytes, **settings: object) -> list[str]:
    return tokenize(mime.parse(content), TokenizerSettings(**settings))  # type: ignore[arg-type]


# -- tokenizer ---------------------------------------------------------------------------


def test_tokens_name_their_origin() -> None:
    html = ('<p>Visit <a href="https://www.shop.spam.co.uk/deals/watches?id=1">our '
            '<b>shop</b></a> or mail sales@offers.example</p>')
    extra = {"X-Mailer": "BulkMailer 5.1", "Reply-To": "x@other.example"}
    tokens = set(tokens_of(message(html=html, attachment=("Invoice 2026.PDF", b"%PDF"),
                                   extra=extra)))
    assert {"s:cheap", "s:watches", "s:cheap watches"} <= tokens
    assert {"f:king@spam.example", "fd:spam.example", "fn:spam", "fn:king"} <= tokens
    assert {"rd:other.example", "rt:differs", "mi:spam.example", "xm:bulkmailer"} <= tokens
    assert {"u:www.shop.spam.co.uk", "ud:spam.co.uk", "up:deals", "up:watches"} <= tokens
    assert {"e:offers.example", "visit", "shop"} <= tokens  # HTML as text
    assert {"a:t:application/pdf", "a:x:pdf", "a:n:invoice"} <= tokens
    assert {"h:x-mailer", "ct:multipart/mixed", "pt:multipart/alternative"} <= tokens
    assert {"buy cheap", "cheap replica", "replica watches"} <= tokens  # word pairs
    assert "<b>" not in " ".join(tokens) and "href" not in tokens


def test_pair_distance_controls_the_markov_part() -> None:
    content = message(body="alpha bravo charlie delta")
    assert "alpha _ charlie" not in tokens_of(content, pair_distance=1)
    assert "alpha _ charlie" in tokens_of(content, pair_distance=2)
    assert not any(" " in t and ":" not in t for t in tokens_of(content, pair_distance=0))


def test_only_body_word_pairs_are_pairs() -> None:
    tokens = tokens_of(message(subject="cheap watches now", body="alpha bravo " + "x" * 40))
    pairs = {t for t in tokens if is_pair(t)}
    assert pairs == {"alpha bravo"}  # not "s:cheap watches", "m:rcpts 1" or "skip:x 40"
    assert {"s:cheap watches", "m:rcpts 1", "skip:x 40"} <= set(tokens)


def test_trace_and_mailer_fingerprint_tokens() -> None:
    received = ("from mail.spam.example (dsl-7.isp.example [203.0.113.57]) by mx.example.com "
                "(8.12.2/8.12.2) with ESMTP id g83K2buK013193; Tue, 3 Sep 2002 15:02:38 -0500")
    extra = {"Received": received}
    content = message(html="<p>hi</p>", extra=extra)
    tokens = set(tokens_of(content))
    assert {"ip:203", "ip:203.0", "ip:203.0.113"} <= tokens
    assert set(client_network_tokens("203.0.113.57")) <= tokens  # what the filter adds
    assert client_network_tokens("1.2.3") == client_network_tokens("2001:db8") == ()
    v6 = message(extra={"Received": "from relay (relay.example [IPv6:2001:db8:5:6::25]) by "
                                     "mx.example.com with ESMTPS id 4F2; Tue, 3 Sep 2002"})
    assert {"ip6:2001:db8", "ip6:2001:db8:5", "ip6:2001:db8:5:6"} <= set(tokens_of(v6))
    assert set(client_network_tokens("2001:db8:5:6::9")) <= set(tokens_of(v6))
    assert not any(t.startswith("ip:8.12") for t in tokens)  # a version, not an address
    assert any(t.startswith("ms:9") for t in tokens)  # <digits@...>: the shape "9"
    assert any(t.startswith("bd:") and "9" in t for t in tokens)  # ===============123==
    assert "td:example.com" in tokens and "m:to (none)" not in tokens
    to_self = message(sender="king@spam.example", extra={})
    to_self = to_self.replace(b"To: bob@example.com", b"To: king@spam.example")
    assert "m:to is from" in tokens_of(to_self)
    hidden = message().replace(b"To: bob@example.com",
                               b"To: undisclosed-recipients:;")
    assert "m:to undisclosed" in tokens_of(hidden)
    no_to = message().replace(b"To: bob@example.com\r\n", b"")
    assert "m:to (none)" in tokens_of(no_to)


def test_our_verdict_headers_and_subject_tag_teach_nothing() -> None:
    plain = message()
    tagged = plain.replace(b"Subject: Cheap", b"X-Spam-Status: Yes, score=9\r\n"
                           b"X-Postwall-Id: abc\r\nSubject: [SPAM] Cheap")
    assert tagged != plain
    assert set(tokens_of(tagged)) == set(tokens_of(plain))
    assert message_digest(tagged, "[SPAM]") == message_digest(plain, "[SPAM]")


def test_long_words_and_odd_input_do_not_break_it() -> None:
    tokens = tokens_of(message(body="x" * 500 + " ok"))
    assert "skip:x 500" in tokens
    assert tokenize(mime.parse(b"\x00\xff garbage without headers")) is not None
    assert all(len(t) <= 200 for t in tokens_of(message(subject="y" * 5000)))


def test_registered_domain() -> None:
    assert registered_domain("a.b.example.com") == "example.com"
    assert registered_domain("www.shop.example.co.uk") == "example.co.uk"
    assert registered_domain("localhost") == "localhost"


# -- combiner ------------------------------------------------------------------------------


def test_token_probability_follows_robinson() -> None:
    settings = ModelSettings(strength=1.0)
    assert token_probability(0, 0, 10, 10, settings) == 0.5
    # seen once in spam only: p = 1, f = (1 * 0.5 + 1 * 1) / 2
    assert token_probability(1, 0, 10, 10, settings) == pytest.approx(0.75)
    assert token_probability(0, 100, 10, 10, settings) < 0.01
    # counts are relative to how much of each class was learned
    assert token_probability(10, 10, 100, 10, settings) < 0.5


def test_chi2q_and_combine() -> None:
    assert chi2q(0.0, 10) == pytest.approx(1.0)
    assert chi2q(2.0, 2) == pytest.approx(math.exp(-1.0))
    probability, spam, ham = combine([0.99] * 20)
    assert probability > 0.99 and spam > 0.99 and ham < 0.01
    assert combine([0.01] * 20)[0] < 0.01
    assert combine([0.99] * 20 + [0.01] * 20)[0] == pytest.approx(0.5, abs=0.01)
    assert combine([]) == (0.5, 0.0, 0.0)
    assert 0 <= combine([1e-300] * 400)[0] <= 1  # no underflow


def test_saturated_evidence_is_still_ordered() -> None:
    assert log_chi2q(30.0, 20) == pytest.approx(math.log(chi2q(30.0, 20)))
    assert chi2q(5000.0, 300) == 0.0 and log_chi2q(5000.0, 300) < -1000  # no underflow
    more_spam, s1, h1 = combine([0.999] * 80 + [0.001] * 70)
    more_ham, s2, h2 = combine([0.999] * 70 + [0.001] * 80)
    assert s1 == h1 == s2 == h2 == 1.0  # both tests saturated ...
    assert 0.5 < more_spam < 0.6 and 0.4 < more_ham < 0.5  # ... but still ordered
    assert combine([0.999] * 75 + [0.001] * 75)[0] == pytest.approx(0.5)


def test_classify_uses_the_strongest_clues_only() -> None:
    table = {f"spam{i}": 0.99 for i in range(10)} | {f"ham{i}": 0.2 for i in range(200)}
    tokens = [*table, "unknown"]
    result = classify(tokens, table, ModelSettings(max_clues=10))
    assert [c.token for c in result.clues] == [f"spam{i}" for i in range(10)]
    assert result.probability > 0.99 and result.tokens == 211 and result.known == 10
    assert result.confidence > 0.9


def test_word_pairs_are_few_among_the_clues() -> None:
    table = {f"w{i} w{i + 1}": 0.999 for i in range(20)} | {f"word{i}": 0.99 for i in range(20)}
    tokens = list(table)
    result = classify(tokens, table, ModelSettings(max_pair_clues=5))
    assert sum(is_pair(c.token) for c in result.clues) == 5
    assert len(result.clues) == 25 and result.clues[0].token == "w0 w1"  # strongest first
    assert not any(is_pair(c.token)
                   for c in classify(tokens, table, ModelSettings(max_pair_clues=0)).clues)
    found = sorted(table.items(), key=lambda c: -abs(c[1] - 0.5))
    assert len(strongest_clues(found, ModelSettings(max_clues=8, max_pair_clues=3))) == 8


# -- ledger, learner and table ---------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    with Storage.open(tmp_path) as opened:
        yield opened


def train(learner: Learner, count: int = 30) -> None:
    jobs = []
    for i in range(count):
        jobs.append(LearnJob(message(f"cheap pills {i}", f"buy viagra pills cheap {i}"),
                             "spam", "cli"))
        jobs.append(LearnJob(message(f"meeting notes {i}", f"agenda for the project meeting {i}",
                                     sender="alice@partner.example"), "ham", "cli"))
    assert all(r.status == "learned" for r in learner.learn_many(jobs))


def test_a_message_is_learned_once_and_a_correction_moves_it(storage: Storage) -> None:
    learner = Learner(storage)
    content = message()
    first = learner.learn(content, "spam", source="report", who="bob@example.com", weight=2)
    assert first.status == "learned"
    digest = first.digest
    entry = storage.training.get(digest)
    assert entry is not None and (entry.label, entry.source, entry.weight, entry.who) == (
        "spam", "report", 2, "bob@example.com")
    assert storage.corpus.read(digest) is not None
    assert storage.training.counts(["s:watches"]) == {"s:watches": (2, 0)}

    again = learner.learn(content, "spam", source="outgoing", weight=1)
    assert again.status == "already"
    assert storage.training.totals().spam == 2

    corrected = learner.learn(content, "ham", source="report", weight=4)
    assert corrected.status == "corrected" and corrected.detail == "spam"
    totals = storage.training.totals()
    assert (totals.spam, totals.ham) == (0, 4)
    assert storage.training.counts(["s:watches"]) == {"s:watches": (0, 4)}
    assert storage.training.count() == 1

    assert learner.forget(digest)
    assert storage.training.totals().ham == 0 and storage.training.get(digest) is None
    assert storage.corpus.read(digest) is None


def test_refused_messages_change_nothing(storage: Storage) -> None:
    learner = Learner(storage, max_bytes=2000)
    assert learner.learn(b"   ", "spam", source="cli").status == "refused"
    result = learner.learn(message(body="x " * 2000), "spam", source="cli")
    assert result.status == "refused" and "larger than" in result.detail
    assert storage.training.count() == 0 and storage.training.totals().seq == 0
    with pytest.raises(ValueError, match="unknown label"):
        learner.learn(message(), "eggs", source="cli")


def test_table_follows_learning_and_classifies(storage: Storage) -> None:
    learner = Learner(storage)
    table = TokenTable()
    table.refresh(storage.training)
    assert table.probabilities == {} and table.state.generation == 0
    train(learner)
    assert table.refresh(storage.training)
    assert (table.spam, table.ham) == (30, 30)
    spam = classify(tokenize(mime.parse(message("cheap pills", "buy cheap viagra pills"))),
                    table.probabilities)
    ham = classify(tokenize(mime.parse(message("meeting", "agenda for the meeting",
                                               sender="alice@partner.example"))),
                   table.probabilities)
    assert spam.probability > 0.9 > 0.1 > ham.probability
    # an incremental change (no reload) reaches the table
    seq = table.state.seq
    learner.learn(message("totally new", "zebra zebra"), "spam", source="cli")
    assert table.refresh(storage.training) and table.state.seq > seq
    assert not table.refresh(storage.training)  # nothing new


def test_rebuild_applies_retention_and_recounts(storage: Storage) -> None:
    learner = Learner(storage)
    train(learner, 5)
    old = storage.training.entries(label="spam", oldest_first=True)[0]
    # Age one entry past the retention by rewriting its ledger time.
    from sqlalchemy import update

    from appliance.storage.schema_learning import training_ledger

    with storage.db.write() as conn:
        conn.execute(update(training_ledger).where(training_ledger.c.digest == old.digest)
                     .values(learned_at=datetime.now(UTC) - timedelta(days=400)))
    before = storage.training.totals()
    report = learner.rebuild(max_age_days=365, max_per_label=3)
    assert report.expired == 2 + 2  # one too old + one beyond 3 spam; 2 ham beyond 3
    assert report.spam == 3 and report.ham == 3
    totals = storage.training.totals()
    assert (totals.spam, totals.ham) == (3, 3) and totals.generation == before.generation + 1
    assert storage.training.get(old.digest) is None and storage.corpus.read(old.digest) is None
    table = TokenTable()
    table.refresh(storage.training)
    assert table.state.generation == totals.generation


def test_error_folders_are_learned_with_their_weights(storage: Storage) -> None:
    storage.mail.keep("errors/spam", "a1", message("cheap pills", "buy now"))
    storage.mail.keep("errors/notspam", "b2", message("minutes", "meeting minutes attached"))
    results = Learner(storage).scan_error_folders({"spam": 2, "ham": 4})
    assert sorted(r.label for r in results) == ["ham", "spam"]
    totals = storage.training.totals()
    assert (totals.spam, totals.ham) == (2, 4)
    assert Learner(storage).scan_error_folders({"spam": 2, "ham": 4}) == []  # known


def test_ledger_rejects_bad_entries(storage: Storage) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="source"):
        storage.training.learn(LedgerEntry("ab" * 8, "spam", "nowhere", 1, "", "", now), ["x"])
    with pytest.raises(ValueError, match="weight"):
        storage.training.learn(LedgerEntry("ab" * 8, "spam", "cli", 0, "", "", now), ["x"])
    assert storage.training.count() == 0


# -- HTML structure and maturing -----------------------------------------------------------


def test_html_structure_tokens() -> None:
    html = ('<html><body bgcolor="#FFFFFF"><font face="Arial" color=red size=4>Hello '
            '<a href="http://shop.example/x">there</a></font><table border="0"></table>'
            '</body></html>')
    tokens = set(tokens_of(message(body="plain", html=html)))
    assert {"ht:font", "ht:table", "ht:a", "ha:font.face", "hv:font.color=red",
            "hv:body.bgcolor=#ffffff", "hv:table.border=0"} <= tokens
    assert not any(t.startswith("ha:a.href") for t in tokens)  # links are URL tokens
    assert "u:shop.example" in tokens
    plain = set(tokens_of(message(body="Hello there <font color=red>")))
    assert not any(t.startswith(("ht:", "ha:", "hv:")) for t in plain)  # text, not HTML


def test_leave_one_out_takes_the_message_itself_off() -> None:
    settings = MaturingSettings()
    # A token only this spam has: with itself taken off nothing is known, so 0.5.
    only_mine = [[1, 0]]
    assert leave_one_out_cells(only_mine, True, 1, 10, 10) == 0.5
    # A token every other spam has too still counts.
    shared = [[6, 0], [6, 0], [6, 0]]
    assert leave_one_out_cells(shared, True, 1, 10, 10) > 0.9
    # Its weight comes off, not one: a ham counted 4 times with ham tokens 4 deep is new.
    assert leave_one_out_cells([[0, 4], [0, 4]], False, 4, 10, 10) == 0.5
    assert corrected_weight(0.3, False, 1, True, settings) == 4  # ham judged 0.3: reported
    assert corrected_weight(0.1, False, 1, True, settings) == 1  # judged well: unchanged
    assert corrected_weight(0.3, False, 4, False, settings) == 16  # again: multiplied
    assert corrected_weight(0.3, False, 32, False, settings) == 64  # capped
    assert corrected_weight(0.7, True, 1, True, settings) == 2
    assert corrected_weight(0.9, True, 1, True, settings) == 1


def sixty_of_each(spam: tuple[str, str], ham: tuple[str, str]) -> list[LearnJob]:
    """60 spam and 60 ham: (subject, body) templates with {i}, each from its own sender."""
    jobs = []
    for i in range(60):
        jobs.append(LearnJob(message(spam[0].format(i=i), spam[1].format(i=i),
                                     f"seller{i}@spam.example"), "spam", "cli"))
        jobs.append(LearnJob(message(ham[0].format(i=i), ham[1].format(i=i),
                                     f"colleague{i}@work.example"), "ham", "cli"))
    return jobs


def test_rebuild_strengthens_the_ham_that_looks_like_spam(storage: Storage) -> None:
    def corpus(learner: Learner) -> None:
        jobs = sixty_of_each(("cheap offer {i}", "buy cheap pills now deal {i}"),
                             ("meeting notes {i}", "the agenda for monday {i}"))
        # A newsletter the user asked for: spam's words, a known ham sender.
        jobs.append(LearnJob(message("cheap offer weekly", "buy cheap pills now deal",
                                     "colleague1@work.example"), "ham", "cli"))
        learner.learn_many(jobs)

    learner = Learner(storage)
    corpus(learner)
    report = learner.rebuild(max_age_days=365, max_per_label=1000)
    assert report.matured >= 1
    assert report.ham > 61 and report.spam >= 60  # the newsletter counts more than once
    assert report.messages == 121

    # Without maturing the counts are the ledger's weights.
    plain = Learner(storage, maturing=MaturingSettings(rounds=0))
    report = plain.rebuild(max_age_days=365, max_per_label=1000)
    assert (report.spam, report.ham, report.matured) == (60, 61, 0)


def test_maturing_judges_by_single_tokens_but_pairs_are_counted(storage: Storage) -> None:
    """Spam and ham use the same words in opposite order, so only the pairs tell them
    apart. A ham in spam's order has nothing spammy but its pairs: maturing, which
    judges by single tokens, leaves it alone; the pairs are still counted for the table."""
    jobs = sixty_of_each(("offer {i}", "alpha bravo charlie delta {i}"),
                         ("notes {i}", "delta charlie bravo alpha {i}"))
    jobs.append(LearnJob(message("notes", "alpha bravo charlie delta",
                                 "colleague1@work.example"), "ham", "cli"))
    learner = Learner(storage)
    learner.learn_many(jobs)
    report = learner.rebuild(max_age_days=365, max_per_label=1000)
    assert (report.spam, report.ham, report.matured) == (60, 61, 0)
    table = TokenTable()
    table.refresh(storage.training)
    assert table.probabilities["alpha bravo"] > 0.9  # spam's order
    assert table.probabilities["delta charlie"] < 0.1  # ham's
    assert "alpha" not in table.probabilities  # both use it: no clue


def test_small_corpora_are_not_matured(storage: Storage) -> None:
    learner = Learner(storage)
    learner.learn_many([
        LearnJob(message("cheap offer", "buy cheap pills now", "a@spam.example"), "spam", "cli"),
        LearnJob(message("cheap offer 2", "buy cheap pills now", "b@spam.example"), "ham", "cli"),
    ])
    report = learner.rebuild(max_age_days=365, max_per_label=1000)
    assert (report.spam, report.ham, report.matured) == (1, 1, 0)
