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

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from appliance import mime
from appliance.classifier.digest import message_digest, training_copy
from appliance.classifier.tokenizer import DEFAULT_SETTINGS, TokenizerSettings, tokenize
from appliance.storage.training import LedgerConflict, LedgerEntry, validate_label
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
class RebuildReport:
    messages: int
    spam: int
    ham: int
    tokens: int
    expired: int
    missing: int
    seconds: float


class Learner:
    def __init__(
        self,
        storage: Storage,
        settings: TokenizerSettings = DEFAULT_SETTINGS,
        *,
        max_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.max_bytes = max_bytes

    def tokens(self, content: bytes) -> list[str]:
        return tokenize(mime.parse(training_copy(content)), self.settings)

    def learn(
        self, content: bytes, label: str, *, source: str, who: str = "", weight: int = 1
    ) -> LearnResult:
        validate_label(label)
        if len(content) > self.max_bytes:
            return LearnResult("refused", label, detail=f"larger than {self.max_bytes} bytes")
        if not content.strip():
            return LearnResult("refused", label, detail="empty message")
        copy = training_copy(content)
        digest = message_digest(copy, self.settings.subject_prefix)
        subject = mime.decoded_header(mime.parse_headers(copy), "Subject")
        store, corpus = self.storage.training, self.storage.corpus
        for _attempt in range(3):
            previous = store.get(digest)
            if previous is not None and previous.label == label:
                return LearnResult("already", label, digest, subject)
            previous_tokens = None
            if previous is not None:
                old = corpus.read(digest)
                previous_tokens = self.tokens(old) if old is not None else None
            tokens = tokenize(mime.parse(copy), self.settings)
            corpus.keep(digest, copy)
            entry = LedgerEntry(digest, label, source, weight, who, subject, datetime.now(UTC))
            try:
                store.learn(entry, tokens, previous=previous, previous_tokens=previous_tokens)
            except LedgerConflict:
                continue  # another process learned it meanwhile: look again
            if previous is not None:
                log.info("corrected %s to %s (was %s, source %s, by %s)", digest[:12], label,
                         previous.label, source, who or "-")
                return LearnResult("corrected", label, digest, subject, previous.label)
            return LearnResult("learned", label, digest, subject)
        return LearnResult("refused", label, digest, subject, "ledger kept changing")

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
        totals = Counter[str]()
        missing: list[str] = []
        for entry in keep:
            content = corpus.read(entry.digest)
            if content is None:
                missing.append(entry.digest)
                continue
            column = 0 if entry.label == "spam" else 1
            totals[entry.label] += entry.weight
            for token in self.tokens(content):
                pair = counts.get(token)
                if pair is None:
                    pair = counts[token] = [0, 0]
                pair[column] += entry.weight
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
            tokens=len(counts), expired=len(doomed), missing=len(missing),
            seconds=round(time.monotonic() - started, 2),
        )
        log.info("classifier rebuilt: %s", report)
        return report


def _all_entries(store: TrainingStore, label: str) -> list[LedgerEntry]:
    out: list[LedgerEntry] = []
    while True:
        page = store.entries(label=label, limit=5000, offset=len(out))
        out.extend(page)
        if len(page) < 5000:
            return out


@dataclass(frozen=True, slots=True)
class LearnJob:
    content: bytes
    label: str
    source: str
    who: str
    weight: int


class BackgroundLearner(BackgroundWriter[LearnJob]):
    """Learning off the proxy's event loop: `submit` only queues; a thread tokenizes and
    writes. A full queue drops jobs (counted, logged): outgoing mail is plentiful, and
    the rebuild keeps the corpus consistent whatever was dropped."""

    def __init__(self, learner: Learner, *, max_queue: int = 200) -> None:
        self.learner = learner
        super().__init__(self._learn_batch, name="classifier-learner", describe=_describe,
                         max_queue=max_queue, batch_size=20, flush_interval=0.5)

    def _learn_batch(self, jobs: Iterable[LearnJob]) -> None:
        for job in jobs:
            self.learner.learn(job.content, job.label, source=job.source, who=job.who,
                               weight=job.weight)


def _describe(job: LearnJob) -> str:
    return f"{job.label} message from {job.source} ({len(job.content)} bytes)"
