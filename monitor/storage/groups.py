"""Commit groups: what one SQLite transaction writes, and how it writes it.

A group collects, on the event loop, the sampled rows, rejected samples, detector scores, rollup
rows, per-minute partial aggregates, record ids and feedback events that its messages produced,
and the callbacks (MQTT acks, HTTP answers) that may run only once all of it is committed.
`write_group` writes it in one transaction on the store's thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from fastdigest import TDigest

from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.feedback import COLUMNS as FEEDBACK_COLUMNS

if TYPE_CHECKING:
    from lookout.monitor.ingest.records import Record

_RECORD_COLUMNS = (
    "id, ts, received_at, app, model, provider, status, latency_ms, ttft_ms, input_tokens, "
    "output_tokens, cost, prompt, response, error, user_id, session_id, metadata"
)
_INSERT_RECORDS = (
    f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) SELECT "
    + ", ".join(f"value->>{i}" for i in range(18))
    + " FROM json_each(?)"
)
_INSERT_RECORD_VALUES = (
    f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * 18)})"
)
_ROWS_PER_STATEMENT = 1000
_UPSERT_PARTIAL = (
    "INSERT INTO partials (minute, app, model, count, errors, output_tokens, tokens,"
    " token_records, cost, latency_s, ttft_s, gen_tps) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (minute, app, model) DO UPDATE SET count = count + excluded.count,"
    " errors = errors + excluded.errors, output_tokens = output_tokens + excluded.output_tokens,"
    " tokens = tokens + excluded.tokens, token_records = token_records + excluded.token_records,"
    " cost = cost + excluded.cost, latency_s = excluded.latency_s, ttft_s = excluded.ttft_s,"
    " gen_tps = excluded.gen_tps"
)
_INSERT_REJECTED = "INSERT INTO rejected (at, source, reason, detail, sample) VALUES (?,?,?,?,?)"
_INSERT_ROLLUP = "INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?)"
# A redelivered event (the same identity) is stored once.
_INSERT_FEEDBACK = (
    f"INSERT OR IGNORE INTO feedback ({FEEDBACK_COLUMNS}) VALUES ({', '.join('?' * 10)})"
)
# A record's fields are scored separately: keep the highest score, merge flags.
_UPDATE_SCORE = (
    "UPDATE records SET ood_score = MAX(COALESCE(ood_score, ?3), ?3),"
    " flags = json_patch(COALESCE(flags, '{}'), ?4) WHERE app = ?1 AND id = ?2"
)
_encode = msgspec.json.Encoder().encode


def encode_record_row(r: Record, record_id: str, cost: float) -> bytes:
    """A records row as a JSON array in `_RECORD_COLUMNS` order, for `_INSERT_RECORDS`."""
    return _encode(
        (
            record_id,
            r.ts,
            r.received_at,
            r.app,
            r.model,
            r.provider,
            r.status,
            r.latency_ms,
            r.ttft_ms,
            r.input_tokens,
            r.output_tokens,
            cost,
            r.prompt,
            r.response,
            r.error,
            r.user_id,
            r.session_id,
            r.metadata,
        )
    )


class CommitGroup:
    """The rows and callbacks of one transaction, and what they weigh in the buffer."""

    __slots__ = (
        "bytes",
        "callbacks",
        "feedback",
        "ids",
        "key",
        "partials",
        "records",
        "rejected",
        "rollups",
        "rows",
        "scores",
    )

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.scores: list[tuple[str, str, float, str]] = []
        self.rejected: list[tuple[Any, ...]] = []
        self.rollups: list[tuple[Any, ...]] = []
        self.partials: list[PartialRow] = []
        self.ids: list[tuple[str, str]] = []
        self.feedback: list[tuple[Any, ...]] = []
        self.callbacks: list[Callable[[], None]] = []
        self.rows = 0
        self.bytes = 0
        self.key = ""  # set by a backend that must recognise a group it already committed

    def empty(self) -> bool:
        return not (self.rows or self.callbacks or self.partials or self.ids)


def merge_digests(stored: bytes | None, added: bytes | None) -> bytes | None:
    """Two serialised t-digests as one (either may be absent)."""
    if stored is None or added is None:
        return stored if added is None else added
    merged = TDigest.from_bytes(stored).merge(TDigest.from_bytes(added))
    return bytes(merged.to_bytes())


def _add_partials(db: sqlite3.Connection, partials: list[PartialRow]) -> None:
    for p in partials:
        key = (p.minute, p.app, p.model)
        stored = db.execute(
            "SELECT latency_s, ttft_s, gen_tps FROM partials WHERE minute=? AND app=? AND model=?",
            key,
        ).fetchone() or (None, None, None)
        db.execute(
            _UPSERT_PARTIAL,
            (
                *key,
                p.count,
                p.errors,
                p.output_tokens,
                p.tokens,
                p.token_records,
                p.cost,
                merge_digests(stored[0], p.latency_s),
                merge_digests(stored[1], p.ttft_s),
                merge_digests(stored[2], p.gen_tps),
            ),
        )


def write_group(db: sqlite3.Connection, group: CommitGroup, refused_at: float, keep: int) -> int:
    """Everything in `group`, in one transaction; if SQLite refuses it for its content, row by
    row (`write_group_row_by_row`). Returns how many rows were refused; raises the errors
    worth retrying."""
    try:
        _write_all(db, group)
    except sqlite3.Error as exc:
        if transient(exc):
            raise
        return write_group_row_by_row(db, group, refused_at, keep)
    return 0


def _write_all(db: sqlite3.Connection, group: CommitGroup) -> None:
    with db:
        db.execute("BEGIN")
        records = group.records
        if nul_rows := [row for row in records if b"\\u0000" in row]:
            # SQLite's JSON functions cut text at a NUL: bind these rows' values instead.
            records = [row for row in records if b"\\u0000" not in row]
            db.executemany(_INSERT_RECORD_VALUES, map(msgspec.json.decode, nul_rows))
        # One statement per chunk of rows: SQLite unpacks the JSON array in C with the GIL
        # released, where executemany would take the GIL back for every row and crawl (~1 ms a
        # row) while the ingest loop keeps the GIL busy. Chunks keep the JSON parse small.
        for i in range(0, len(records), _ROWS_PER_STATEMENT):
            blob = b"[" + b",".join(records[i : i + _ROWS_PER_STATEMENT]) + b"]"
            db.execute(_INSERT_RECORDS, (blob,))
        if group.rejected:
            db.executemany(_INSERT_REJECTED, group.rejected)
        if group.rollups:
            db.executemany(_INSERT_ROLLUP, group.rollups)
        if group.scores:
            db.executemany(_UPDATE_SCORE, group.scores)
        if group.feedback:
            db.executemany(_INSERT_FEEDBACK, group.feedback)
        _add_partials(db, group.partials)
        _add_ids(db, group.ids)


def _add_ids(db: sqlite3.Connection, ids: list[tuple[str, str]]) -> None:
    if ids:
        db.execute("INSERT INTO seen_ids (n, ids) VALUES (?, ?)", (len(ids), _encode(ids)))


# SQLite's primary result codes for conditions that pass (or that an operator fixes): busy,
# locked, out of memory, read-only, I/O error, disk full, cannot open, lock protocol.
_TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def transient(exc: sqlite3.Error) -> bool:
    """Whether retrying the same write may succeed; otherwise something in it is refused."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or code & 0xFF in _TRANSIENT_CODES


def write_group_row_by_row(
    db: sqlite3.Connection, group: CommitGroup, refused_at: float, sample_bytes: int
) -> int:
    """`group` in one transaction, each sampled row, rejected sample, score and feedback event
    in a savepoint of its own: what SQLite refuses (a constraint, a value it cannot take) is
    left out and kept as a rejected sample ('store_refused'), and the rest commits. Returns how
    many were left out. For the rare group that `write_group` could not write for its
    content."""
    refused: list[tuple[bytes, str]] = []
    with db:
        db.execute("BEGIN")
        rows = [(_INSERT_RECORD_VALUES, msgspec.json.decode(r), r) for r in group.records]
        rows += [(_INSERT_REJECTED, r, repr(r).encode()) for r in group.rejected]
        rows += [(_INSERT_ROLLUP, r, repr(r).encode()) for r in group.rollups]
        rows += [(_UPDATE_SCORE, r, repr(r).encode()) for r in group.scores]
        rows += [(_INSERT_FEEDBACK, r, repr(r).encode()) for r in group.feedback]
        for sql, values, raw in rows:
            db.execute("SAVEPOINT one_row")
            try:
                db.execute(sql, values)
            except sqlite3.Error as exc:
                if transient(exc):
                    raise
                db.execute("ROLLBACK TO one_row")
                refused.append((raw, str(exc)))
            db.execute("RELEASE one_row")
        db.executemany(
            _INSERT_REJECTED,
            [
                (refused_at, "store", "store_refused", error[:200], raw[:sample_bytes])
                for raw, error in refused
            ],
        )
        _add_partials(db, group.partials)
        _add_ids(db, group.ids)
    return len(refused)


def recent_ids(db: sqlite3.Connection, limit: int) -> list[tuple[str, str]]:
    """The newest `limit` (app, id) pairs, oldest first."""
    chunks: list[bytes] = []
    total = 0
    for n, blob in db.execute("SELECT n, ids FROM seen_ids ORDER BY rowid DESC"):
        if total >= limit:
            break
        chunks.append(blob)
        total += n
    pairs = [tuple(pair) for blob in reversed(chunks) for pair in msgspec.json.decode(blob)]
    return [(str(app), str(rid)) for app, rid in pairs[-limit:]] if limit else []


def prune_ids(db: sqlite3.Connection, keep: int) -> None:
    """Forget the ids older than the newest `keep` (in whole groups)."""
    total = 0
    for rowid, n in db.execute("SELECT rowid, n FROM seen_ids ORDER BY rowid DESC"):
        total += n
        if total >= keep:
            db.execute("DELETE FROM seen_ids WHERE rowid < ?", (rowid,))
            return
