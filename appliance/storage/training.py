"""The classifier's token counts and the training ledger, changed together.

Every learned message is one ledger row (its digest, label, source, weight, who, when);
its tokens add `weight` to their count for that label. Ledger and counts change in one
transaction, so they never disagree. A correction (the same digest learned with the
other label) takes the old weight off the old label first.

Counters (in the shared `counters` table): `bayes_spam` / `bayes_ham` are the weighted
numbers of messages learned, `bayes_seq` increases with every change and is written into
each token row it touched (proxies fetch `changes_since(seq)`), `bayes_generation`
increases when the whole table is replaced by a rebuild (proxies reload everything).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from appliance.storage.engine import Database
from appliance.storage.schema import counters
from appliance.storage.schema_learning import bayes_tokens, training_ledger
from appliance.storage.types import require_aware

LABELS: tuple[str, ...] = ("spam", "ham")
SOURCES: tuple[str, ...] = ("outgoing", "report", "folder", "quarantine", "cli", "rebuild")
MAX_WHO = 320
_CHUNK = 500


class LedgerConflict(ValueError):
    """The ledger row of a message changed between reading it and learning."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    digest: str
    label: str
    source: str
    weight: int
    who: str
    subject: str
    learned_at: datetime


@dataclass(frozen=True, slots=True)
class LearnItem:
    entry: LedgerEntry
    tokens: Sequence[str]
    previous: LedgerEntry | None = None  # the ledger row the caller saw (a correction)
    previous_tokens: Sequence[str] | None = None  # what `previous` added (default: tokens)


@dataclass(frozen=True, slots=True)
class Totals:
    spam: int  # weighted messages learned as spam
    ham: int
    seq: int
    generation: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    token: str
    spam: int
    ham: int


def validate_label(label: str) -> str:
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected spam or ham")
    return label


def validate_entry(entry: LedgerEntry) -> None:
    validate_label(entry.label)
    if entry.source not in SOURCES:
        raise ValueError(f"unknown source {entry.source!r}; expected one of {', '.join(SOURCES)}")
    if not 1 <= entry.weight <= 100:
        raise ValueError("weight must be between 1 and 100")
    if not entry.digest or len(entry.digest) > 64:
        raise ValueError("digest must be 1..64 characters")
    require_aware(entry.learned_at, "learned_at")


def _insert_for(dialect: str) -> Any:
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise NotImplementedError(f"token upsert is not implemented for {dialect}")


def _execute_many(
    conn: Connection, stmt: Any, names: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Execute `stmt` once per row of values for `names`, straight through the driver.

    A batch of 50 messages upserts some 12,000 tokens; SQLAlchemy's per-row parameter
    processing took a third of the learning time. The statement is still built and
    compiled by SQLAlchemy for the connection's dialect, only once."""
    compiled = stmt.compile(dialect=conn.dialect)
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup]
        if order != list(range(len(names))):
            rows = [tuple(row[i] for i in order) for row in rows]
        params: Sequence[Any] = rows
    else:
        params = [dict(zip(names, row, strict=True)) for row in rows]
    for start in range(0, len(params), _CHUNK):
        conn.exec_driver_sql(str(compiled), params[start : start + _CHUNK])


def _not_negative(expression: Any) -> Any:
    return case((expression < 0, literal(0)), else_=expression)


class TrainingStore:
    """Token counts and ledger. Thread-safe; every write is one short transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- ledger ----------------------------------------------------------------------

    def get(self, digest: str) -> LedgerEntry | None:
        t = training_ledger
        with self._db.read() as conn:
            row = conn.execute(select(t).where(t.c.digest == digest)).first()
        return _entry(row._mapping) if row is not None else None

    def get_many(self, digests: Sequence[str]) -> dict[str, LedgerEntry]:
        """The ledger rows of those digests that have one (one query per 500)."""
        t = training_ledger
        found: dict[str, LedgerEntry] = {}
        with self._db.read() as conn:
            for start in range(0, len(digests), _CHUNK):
                chunk = list(digests[start : start + _CHUNK])
                for row in conn.execute(select(t).where(t.c.digest.in_(chunk))):
                    found[row.digest] = _entry(row._mapping)
        return found

    def entries(
        self, *, label: str | None = None, limit: int = 100, offset: int = 0,
        oldest_first: bool = False,
    ) -> list[LedgerEntry]:
        t = training_ledger
        query = select(t)
        if label is not None:
            query = query.where(t.c.label == validate_label(label))
        order = (t.c.learned_at, t.c.digest) if oldest_first else (
            t.c.learned_at.desc(), t.c.digest.desc())
        query = query.order_by(*order).limit(limit).offset(offset)
        with self._db.read() as conn:
            return [_entry(row._mapping) for row in conn.execute(query)]

    def count(self, label: str | None = None) -> int:
        t = training_ledger
        query = select(func.count()).select_from(t)
        if label is not None:
            query = query.where(t.c.label == validate_label(label))
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    # -- learning ----------------------------------------------------------------------

    def learn(
        self, entry: LedgerEntry, tokens: Sequence[str], *, previous: LedgerEntry | None = None,
        previous_tokens: Sequence[str] | None = None,
    ) -> None:
        """Record `entry` and add its weight to `tokens` under its label. `previous` is
        the ledger row the caller found for the same digest (a correction): its weight
        is taken off its label first, from `previous_tokens` (default: `tokens`).
        Raises `LedgerConflict` if the ledger changed meanwhile (another process learned
        the same message), so the caller can look again."""
        item = LearnItem(entry, tokens, previous, previous_tokens)
        if not self.learn_batch([item])[0]:
            raise LedgerConflict(f"ledger entry {entry.digest} changed meanwhile")

    def learn_batch(self, items: Sequence[LearnItem]) -> list[bool]:
        """Learn several messages in one transaction, their token changes merged (many
        messages share most tokens). Returns, per item, False where the ledger changed
        since the caller read `previous` (that item is skipped; look again)."""
        for item in items:
            validate_entry(item.entry)
        t = training_ledger
        done: list[bool] = []
        deltas: dict[str, list[int]] = {}
        totals = {"spam": 0, "ham": 0}

        def add(tokens: Sequence[str], label: str, weight: int) -> None:
            column = 0 if label == "spam" else 1
            for token in tokens:
                pair = deltas.get(token)
                if pair is None:
                    pair = deltas[token] = [0, 0]
                pair[column] += weight
            totals[label] += weight

        with self._db.write() as conn:
            digests = [item.entry.digest for item in items]
            current: dict[str, LedgerEntry] = {}
            for start in range(0, len(digests), _CHUNK):
                for row in conn.execute(
                    select(t).where(t.c.digest.in_(digests[start : start + _CHUNK]))
                ):
                    current[row.digest] = _entry(row._mapping)
            seen: set[str] = set()
            rows = []
            for item in items:
                entry, previous = item.entry, item.previous
                if current.get(entry.digest) != previous or entry.digest in seen:
                    done.append(False)
                    continue
                seen.add(entry.digest)
                done.append(True)
                if previous is not None:
                    old = item.tokens if item.previous_tokens is None else item.previous_tokens
                    add(list(dict.fromkeys(old)), previous.label, -previous.weight)
                    conn.execute(delete(t).where(t.c.digest == entry.digest))
                add(list(dict.fromkeys(item.tokens)), entry.label, entry.weight)
                rows.append(_row(entry))
            if rows:
                conn.execute(t.insert(), rows)  # one statement, after the corrections' deletes
            if any(done):
                seq = self._bump(conn, "bayes_seq")
                self._apply_deltas(conn, deltas, seq)
                for label, weight in totals.items():
                    if weight:
                        self._add_total(conn, label, weight)
        return done

    def forget(self, entry: LedgerEntry, tokens: Sequence[str]) -> bool:
        """Unlearn a ledger entry (retention, or an operator's undo); False if gone."""
        t = training_ledger
        with self._db.write() as conn:
            removed = conn.execute(
                delete(t).where(t.c.digest == entry.digest, t.c.label == entry.label)
            ).rowcount
            if not removed:
                return False
            seq = self._bump(conn, "bayes_seq")
            self._apply_deltas(conn, _deltas(tokens, entry.label, -entry.weight), seq)
            self._add_total(conn, entry.label, -entry.weight)
        return True

    def drop_entries(self, digests: Iterable[str]) -> int:
        """Delete ledger rows without touching counts (a rebuild recounts anyway)."""
        digests = list(digests)
        removed = 0
        with self._db.write() as conn:
            for start in range(0, len(digests), _CHUNK):
                chunk = digests[start : start + _CHUNK]
                removed += conn.execute(
                    delete(training_ledger).where(training_ledger.c.digest.in_(chunk))
                ).rowcount
        return removed

    def apply_counts(self, tokens: Sequence[str], label: str, weight: int) -> None:
        """Add (or with a negative weight take off) counts without a ledger row: a
        rebuild re-applies what was learned while it counted."""
        with self._db.write() as conn:
            seq = self._bump(conn, "bayes_seq")
            self._apply_deltas(conn, _deltas(tokens, label, weight), seq)
            self._add_total(conn, label, weight)

    def replace_counts(self, counts: Mapping[str, tuple[int, int]], spam: int, ham: int) -> int:
        """Replace every token count (a rebuild) and the totals; returns the generation."""
        with self._db.write() as conn:
            seq = self._bump(conn, "bayes_seq")
            conn.execute(delete(bayes_tokens))
            rows = [
                {"token": token, "spam": s, "ham": h, "seq": seq}
                for token, (s, h) in counts.items()
                if s > 0 or h > 0
            ]
            for start in range(0, len(rows), 5000):
                conn.execute(bayes_tokens.insert(), rows[start : start + 5000])
            self._set(conn, "bayes_spam", spam)
            self._set(conn, "bayes_ham", ham)
            return self._bump(conn, "bayes_generation")

    def _apply_deltas(self, conn: Connection, deltas: Mapping[str, list[int]], seq: int) -> None:
        """Add (spam, ham) deltas to tokens: increases as one upsert, decreases (never
        below zero) as updates."""
        t = bayes_tokens
        rows = [(tok, max(s, 0), max(h, 0), seq)
                for tok, (s, h) in deltas.items() if s > 0 or h > 0]
        if rows:
            stmt = _insert_for(conn.dialect.name)(t)
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.token],
                set_={"spam": t.c.spam + stmt.excluded.spam, "ham": t.c.ham + stmt.excluded.ham,
                      "seq": stmt.excluded.seq},
            )
            _execute_many(conn, stmt, ("token", "spam", "ham", "seq"), rows)
        for column, index in (("spam", 0), ("ham", 1)):
            by_amount: dict[int, list[str]] = {}
            for tok, pair in deltas.items():
                if pair[index] < 0:
                    by_amount.setdefault(pair[index], []).append(tok)
            for amount, tokens in by_amount.items():
                for start in range(0, len(tokens), _CHUNK):
                    conn.execute(
                        update(t)
                        .where(t.c.token.in_(tokens[start : start + _CHUNK]))
                        .values({column: _not_negative(t.c[column] + amount), "seq": seq})
                    )

    def _add_total(self, conn: Connection, label: str, weight: int) -> None:
        name = f"bayes_{validate_label(label)}"
        conn.execute(
            update(counters)
            .where(counters.c.name == name)
            .values(value=_not_negative(counters.c.value + weight))
        )

    @staticmethod
    def _bump(conn: Connection, name: str) -> int:
        conn.execute(
            update(counters).where(counters.c.name == name).values(value=counters.c.value + 1)
        )
        return int(
            conn.execute(select(counters.c.value).where(counters.c.name == name)).scalar_one()
        )

    @staticmethod
    def _set(conn: Connection, name: str, value: int) -> None:
        conn.execute(update(counters).where(counters.c.name == name).values(value=value))

    def purge_empty_tokens(self) -> int:
        """Delete tokens whose counts both fell to zero (after unlearning)."""
        t = bayes_tokens
        with self._db.write() as conn:
            return int(conn.execute(delete(t).where(t.c.spam <= 0, t.c.ham <= 0)).rowcount)

    # -- reading the model ---------------------------------------------------------------

    def totals(self) -> Totals:
        names = ("bayes_spam", "bayes_ham", "bayes_seq", "bayes_generation")
        with self._db.read() as conn:
            values = dict(
                conn.execute(
                    select(counters.c.name, counters.c.value).where(counters.c.name.in_(names))
                ).all()
            )
        return Totals(*(int(values.get(name, 0)) for name in names))

    def all_tokens(self, batch: int = 20000) -> Iterator[list[TokenRow]]:
        """Every token row, in batches (keyset pagination, so memory stays flat)."""
        t = bayes_tokens
        last = ""
        while True:
            with self._db.read() as conn:
                rows = conn.execute(
                    select(t.c.token, t.c.spam, t.c.ham)
                    .where(t.c.token > last)
                    .order_by(t.c.token)
                    .limit(batch)
                ).all()
            if not rows:
                return
            yield [TokenRow(*row) for row in rows]
            last = rows[-1][0]

    def changes_since(self, seq: int, limit: int = 200_000) -> list[TokenRow]:
        """Tokens changed after learn sequence `seq` (at most `limit`; a proxy that gets
        that many reloads everything instead)."""
        t = bayes_tokens
        with self._db.read() as conn:
            rows = conn.execute(
                select(t.c.token, t.c.spam, t.c.ham).where(t.c.seq > seq).limit(limit)
            ).all()
        return [TokenRow(*row) for row in rows]

    def counts(self, tokens: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(spam, ham) of the given tokens that are known (for explanations)."""
        tokens = list(dict.fromkeys(tokens))
        t = bayes_tokens
        found: dict[str, tuple[int, int]] = {}
        with self._db.read() as conn:
            for start in range(0, len(tokens), _CHUNK):
                for token, spam, ham in conn.execute(
                    select(t.c.token, t.c.spam, t.c.ham).where(
                        t.c.token.in_(tokens[start : start + _CHUNK])
                    )
                ):
                    found[token] = (int(spam), int(ham))
        return found

    def token_count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(bayes_tokens)).scalar_one())


def _deltas(tokens: Sequence[str], label: str, weight: int) -> dict[str, list[int]]:
    index = 0 if validate_label(label) == "spam" else 1
    deltas: dict[str, list[int]] = {}
    for token in dict.fromkeys(tokens):
        pair = deltas[token] = [0, 0]
        pair[index] = weight
    return deltas


def _row(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "digest": entry.digest,
        "label": entry.label,
        "source": entry.source,
        "weight": entry.weight,
        "who": entry.who[:MAX_WHO],
        "subject": entry.subject.replace("\x00", "")[:500],
        "learned_at": entry.learned_at,
    }


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        digest=row["digest"],
        label=row["label"],
        source=row["source"],
        weight=int(row["weight"]),
        who=row["who"],
        subject=row["subject"],
        learned_at=row["learned_at"],
    )


__all__ = [
    "LABELS", "SOURCES", "LedgerConflict", "LedgerEntry", "TokenRow", "Totals", "TrainingStore",
]
