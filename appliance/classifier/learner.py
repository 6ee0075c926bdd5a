"""Learning: every source goes through `Learner.learn`, which keeps the training ledger,
the corpus copy and the token counts in step.

- A message is identified by its digest (`digest.message_digest`); learning it again with
  the same label changes nothing ("already"), with the other label it is a correction:
  the old weight is taken off the old label, then the new one added ("corrected").
- Sources and their weights come from the caller: outgoing mail (ham, 1), the
  errors/spam and errors/notspam folders and spam@/notspam@ reports (false negatives 2,
  false positives 4), released quarantine (ham, like a false positive), the command line.
- `rebuild` applies the corpus retention (age, count per label) and recounts every token
  from the corpus copies, so the model always equals what the ledger says was learned.

Storage is passed in; the work is CPU and file I/O, so callers on an event loop run these
methods in a thread (`BackgroundLearner` does that for outgoing mail).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from appliance import mime
from appliance.classifier.digest import message_digest, training_copy
from appliance.classifier.maturing import (
    DEFAULT_MATURING,
    MaturingSettings,
    corrected_weight,
    leave_one_out_cells,
)
from appliance.classifier.model import DEFAULT_MODEL, ModelSettings
from appliance.classifier.tokenizer import (
    DEFAULT_SETTINGS,
    TokenizerSettings,
    is_pair,
    tokenize,
)
from appliance.storage.training import LearnItem, LedgerEntry, validate_label
from appliance.storage.writer import BackgroundWriter

if TYPE_CHECKING:
    from appliance.storage.facade import Storage
    from appliance.storage.training import TrainingStore

log = logging.getLogger("postwall.learning")

Status = Literal["learned", "corrected", "already", "refused"]
ERROR_FOLDERS: tuple[tuple[str, str], ...] = (("errors/spam", "spam"), ("errors/notspam", "ham"))


@dataclass(frozen=True, slots=True)
class LearnResult:
    status: Status
    label: str
    digest: str = ""
    subject: str = ""
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.status in ("learned", "corrected")

    def describe(self) -> str:
        subject = f' "{self.subject[:80]}"' if self.subject else ""
        if self.status == "learned":
            return f"learned as {self.label}:{subject}"
        if self.status == "corrected":
            return f"corrected to {self.label} (was {self.detail}):{subject}"
        if self.status == "already":
            return f"already learned as {self.label}, nothing changed:{subject}"
        return f"not learned ({self.detail}):{subject}"


@dataclass(frozen=True, slots=True)
class LearnJob:
    content: bytes
    label: str
    source: str
    who: str = ""
    weight: int = 1


@dataclass(frozen=True, slots=True)
class _Prepared:
    job: LearnJob
    copy: bytes
    digest: str
    subject: str


@dataclass(frozen=True, slots=True)
class RebuildReport:
    messages: int
    spam: int
    ham: int
    tokens: int
    expired: int
    missing: int
    seconds: float
    matured: int = 0  # messages counted more than their ledger weight (see maturing.py)


class Learner:
    def __init__(
        self,
        storage: Storage,
        settings: TokenizerSettings = DEFAULT_SETTINGS,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        model: ModelSettings = DEFAULT_MODEL,
        maturing: MaturingSettings = DEFAULT_MATURING,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.max_bytes = max_bytes
        self.model = model  # what maturing scores with: the filter's model settings
        self.maturing = maturing

    def tokens(self, content: bytes) -> list[str]:
        return tokenize(mime.parse(training_copy(content)), self.settings)

    def learn(
        self, content: bytes, label: str, *, source: str, who: str = "", weight: int = 1
    ) -> LearnResult:
        return self.learn_many([LearnJob(content, label, source, who, weight)])[0]

    def learn_many(self, jobs: Sequence[LearnJob]) -> list[LearnResult]:
        """Learn messages in one database transaction (their corpus copies are written
        first); a message the ledger already has with the same label is left alone."""
        results: list[LearnResult | None] = [None] * len(jobs)
        pending: dict[int, _Prepared] = {}
        for index, job in enumerate(jobs):
            validate_label(job.label)
            if len(job.content) > self.max_bytes:
                results[index] = LearnResult("refused", job.label,
                                             detail=f"larger than {self.max_bytes} bytes")
            elif not job.content.strip():
                results[index] = LearnResult("refused", job.label, detail="empty message")
            else:
                copy = training_copy(job.content)
                headers = mime.parse_headers(copy)
                pending[index] = _Prepared(
                    job, copy, message_digest(copy, self.settings.subject_prefix, headers),
                    mime.decoded_header(headers, "Subject"),
                )
        store, corpus = self.storage.training, self.storage.corpus
        for _attempt in range(3):
            if not pending:
                break
            items: list[tuple[int, LearnItem]] = []
            known = store.get_many([prepared.digest for prepared in pending.values()])
            for index, prepared in pending.items():
                job = prepared.job
                previous = known.get(prepared.digest)
                if previous is not None and previous.label == job.label:
                    results[index] = LearnResult("already", job.label, prepared.digest,
                                                 prepared.subject)
                    continue
                previous_tokens = None
                if previous is not None:
                    old = corpus.read(prepared.digest)
                    previous_tokens = self.tokens(old) if old is not None else None
                tokens = tokenize(mime.parse(prepared.copy), self.settings)
                corpus.keep(prepared.digest, prepared.copy, durable=len(pending) == 1)
                entry = LedgerEntry(prepared.digest, job.label, job.source, job.weight,
                                    job.who, prepared.subject, datetime.now(UTC))
                items.append((index, LearnItem(entry, tokens, previous, previous_tokens)))
            if len(items) > 1:
                corpus.sync()
            done = store.learn_batch([item for _, item in items]) if items else []
            for (index, item), ok in zip(items, done, strict=True):
                if not ok:
                    continue  # the ledger changed meanwhile: look again
                prepared = pending[index]
                previous = item.previous
                if previous is not None:
                    log.info("corrected %s to %s (was %s, source %s, by %s)",
                             prepared.digest[:12], item.entry.label, previous.label,
                             item.entry.source, item.entry.who or "-")
                    results[index] = LearnResult("corrected", item.entry.label,
                                                 prepared.digest, prepared.subject,
                                                 previous.label)
                else:
                    results[index] = LearnResult("learned", item.entry.label, prepared.digest,
                                                 prepared.subject)
            pending = {i: p for i, p in pending.items() if results[i] is None}
        for index, prepared in pending.items():
            results[index] = LearnResult("refused", prepared.job.label, prepared.digest,
                                         prepared.subject, "ledger kept changing")
        return [result for result in results if result is not None]

    def forget(self, digest: str) -> bool:
        """Unlearn one message (an operator's undo) and drop its corpus copy."""
        entry = self.storage.training.get(digest)
        if entry is None:
            return False
        content = self.storage.corpus.read(digest)
        tokens = self.tokens(content) if content is not None else []
        removed = self.storage.training.forget(entry, tokens)
        self.storage.corpus.delete(digest)
        return removed

    # -- the error folders ---------------------------------------------------------------

    def scan_error_folders(self, weights: dict[str, int]) -> list[LearnResult]:
        """Learn every message an operator (or the UI) put in errors/spam or
        errors/notspam that the ledger does not know yet. Files stay where they are."""
        results = []
        mail = self.storage.mail
        for folder, label in ERROR_FOLDERS:
            for kept in mail.list(folder):
                try:
                    content = mail.read(folder, kept.txid)
                except FileNotFoundError:
                    continue
                result = self.learn(content, label, source="folder", who=folder,
                                    weight=weights[label])
                if result.changed:
                    results.append(result)
        return results

    # -- rebuild -----------------------------------------------------------------------

    def rebuild(self, *, max_age_days: float, max_per_label: int) -> RebuildReport:
        """Apply the corpus retention, then recount every token from the corpus."""
        started = time.monotonic()
        store, corpus = self.storage.training, self.storage.corpus
        listed_at = datetime.now(UTC)
        cutoff = listed_at - timedelta(days=max_age_days)
        keep: list[LedgerEntry] = []
        doomed: list[str] = []
        for label in ("spam", "ham"):
            newest_first = _all_entries(store, label)
            for index, entry in enumerate(newest_first):
                if index >= max_per_label or entry.learned_at < cutoff:
                    doomed.append(entry.digest)
                else:
                    keep.append(entry)
        counts: dict[str, list[int]] = {}
        # Each message's count cells (shared with `counts`): what maturing needs to score
        # it leave-one-out and to change its weight, about 5 KB per message. Maturing
        # judges by the single tokens (see `_mature`); the word pairs' cells are kept
        # apart and only counted.
        learned: list[tuple[LedgerEntry, list[list[int]]]] = []
        pair_cells: list[list[list[int]]] = []
        missing: list[str] = []
        for entry in keep:
            content = corpus.read(entry.digest)
            if content is None:
                missing.append(entry.digest)
                continue
            cells: list[list[int]] = []
            pairs: list[list[int]] = []
            for token in self.tokens(content):
                cell = counts.get(token)
                if cell is None:
                    cell = counts[token] = [0, 0]
                (pairs if is_pair(token) else cells).append(cell)
            learned.append((entry, cells))
            pair_cells.append(pairs)
        weights = self._mature(learned)
        totals = Counter[str]()
        for (entry, cells), pairs, weight in zip(learned, pair_cells, weights, strict=True):
            column = 0 if entry.label == "spam" else 1
            totals[entry.label] += weight
            for cell in itertools.chain(cells, pairs):
                cell[column] += weight
        matured = sum(w != e.weight for (e, _), w in zip(learned, weights, strict=True))
        del learned, pair_cells
        store.drop_entries(doomed + missing)
        for digest in doomed:
            corpus.delete(digest)
        store.replace_counts({t: (s, h) for t, (s, h) in counts.items()},
                             totals["spam"], totals["ham"])
        # Messages learned while we counted were wiped by the replacement: add them again.
        for entry in store.entries(limit=1_000_000):
            if entry.learned_at <= listed_at:
                break
            content = corpus.read(entry.digest)
            if content is not None:
                store.apply_counts(self.tokens(content), entry.label, entry.weight)
        report = RebuildReport(
            messages=len(keep) - len(missing), spam=totals["spam"], ham=totals["ham"],
            tokens=len(counts), expired=len(doomed), missing=len(missing), matured=matured,
            seconds=round(time.monotonic() - started, 2),
        )
        log.info("classifier rebuilt: %s", report)
        return report

    def _mature(self, learned: Sequence[tuple[LedgerEntry, list[list[int]]]]) -> list[int]:
        """The weight each message is counted with: its ledger weight, raised for the
        messages the counts misjudge leave-one-out (see `maturing`). `learned` holds each
        message's count cells of its single tokens, still zero; they are left zero.

        Word pairs are left out of this judgement: scored with all of them, a newsletter's
        boilerplate counts many times over and maturing raises the wrong messages
        (on the SpamAssassin corpus, 15 seeds: 0.26% instead of 0.22% false positives)."""
        settings = self.maturing
        weights = [entry.weight for entry, _ in learned]
        spam = [entry.label == "spam" for entry, _ in learned]
        spam_messages = sum(spam)
        if min(spam_messages, len(spam) - spam_messages) < settings.min_messages:
            return weights
        for round_index in range(settings.rounds):
            nspam = nham = 0
            for cells, weight, is_spam in zip((c for _, c in learned), weights, spam,
                                              strict=True):
                column = 0 if is_spam else 1
                for pair in cells:
                    pair[column] += weight
                if is_spam:
                    nspam += weight
                else:
                    nham += weight
            if not nspam or not nham:
                new = weights
            else:
                new = [
                    corrected_weight(
                        leave_one_out_cells(cells, is_spam, weight, nspam, nham, self.model),
                        is_spam, weight, round_index == 0, settings)
                    for (_, cells), weight, is_spam in zip(learned, weights, spam, strict=True)
                ]
            for cells, weight, is_spam in zip((c for _, c in learned), weights, spam,
                                              strict=True):
                column = 0 if is_spam else 1
                for pair in cells:
                    pair[column] -= weight
            if new == weights:
                break
            weights = new
        return weights


def _all_entries(store: TrainingStore, label: str) -> list[LedgerEntry]:
    out: list[LedgerEntry] = []
    while True:
        page = store.entries(label=label, limit=5000, offset=len(out))
        out.extend(page)
        if len(page) < 5000:
            return out




class BackgroundLearner(BackgroundWriter[LearnJob]):
    """Learning off the proxy's event loop: `submit` only queues; a thread tokenizes and
    writes. A full queue drops jobs (counted, logged): outgoing mail is plentiful, and
    the rebuild keeps the corpus consistent whatever was dropped."""

    def __init__(self, learner: Learner, *, max_queue: int = 200) -> None:
        self.learner = learner
        super().__init__(self._learn_batch, name="classifier-learner", describe=_describe,
                         max_queue=max_queue, batch_size=50, flush_interval=0.5)

    def _learn_batch(self, jobs: Iterable[LearnJob]) -> None:
        self.learner.learn_many(list(jobs))


def _describe(job: LearnJob) -> str:
    return f"{job.label} message from {job.source} ({len(job.content)} bytes)"
