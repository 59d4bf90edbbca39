"""Commit groups on PostgreSQL: what one transaction writes, and how (psycopg 3, async).

Sampled rows go in as one JSON array per chunk that the server unpacks (one statement per
1,000 rows, no per-row work in Python); per-minute partials as this process's running totals
(pg_partials.py), with no read. Each group carries a key written in the same transaction: a
retry after a connection lost during COMMIT, when the commit may have happened, finds the key
and writes nothing twice.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from lookout.monitor.storage.feedback import COLUMNS as FEEDBACK_COLUMNS
from lookout.monitor.storage.pg_partials import UPSERT_PARTIALS, WriterRow, rows_json

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from lookout.monitor.storage.groups import CommitGroup

_COLUMNS = (
    "id, ts, received_at, app, model, provider, status, latency_ms, ttft_ms, input_tokens, "
    "output_tokens, cost, prompt, response, error, user_id, session_id, metadata"
)
_CASTS: tuple[str, ...] = ("", "::float8", "::float8", "", "", "", "", "::float8", "::float8")
_CASTS += ("::bigint", "::bigint", "::float8", "", "", "", "", "", "")
_RECORDS_FROM_JSON = (
    f"INSERT INTO records ({_COLUMNS}) SELECT "
    + ", ".join(f"(v->>{i}){cast}" for i, cast in enumerate(_CASTS))
    + " FROM jsonb_array_elements({rows}::jsonb) AS r(v) ON CONFLICT (app, id) DO NOTHING"
)
_INSERT_RECORDS = _RECORDS_FROM_JSON.replace("{rows}", "%s")
_INSERT_RECORD_VALUES = (
    f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join(['%s'] * 18)})"
    " ON CONFLICT (app, id) DO NOTHING"
)
_ROWS_PER_STATEMENT = 1000
_INSERT_REJECTED = (
    "INSERT INTO rejected (at, source, reason, detail, sample) VALUES (%s, %s, %s, %s, %s)"
)
_UPSERT_ROLLUP = (
    "INSERT INTO rollups VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (minute, app, model, series) DO UPDATE SET value = excluded.value"
)
# A redelivered event (the same identity) is stored once.
_INSERT_FEEDBACK = (
    f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})"
    " ON CONFLICT DO NOTHING"
)
_UPDATE_SCORE = (
    "UPDATE records SET ood_score = GREATEST(COALESCE(ood_score, %(score)s), %(score)s),"
    " flags = %(flags)s WHERE app = %(app)s AND id = %(id)s"
)
_encode = msgspec.json.Encoder().encode
# The common group (sampled rows, partials, ids) in one statement, so one round trip that
# commits on its own; the claim's key refuses a second write of a group whose first attempt's
# outcome was unknown (the retry then sees `_CLAIM_CONSTRAINT` violated and writes nothing).
_WRITE_GROUP = (
    "WITH claim AS (INSERT INTO commit_groups VALUES (%(key)s, %(at)s)),"
    f" recs AS ({_RECORDS_FROM_JSON.replace('{rows}', '%(records)s')}),"
    f" parts AS ({UPSERT_PARTIALS}),"
    " ids AS (INSERT INTO seen_ids (n, ids) SELECT %(n)s, %(ids)s WHERE %(n)s > 0)"
    " SELECT 1"
)
_CLAIM_CONSTRAINT = "commit_groups_pkey"

# SQLSTATE classes of conditions that pass: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention (admin
# shutdown, cannot connect now), system error; and lock not available.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def transient(exc: Exception) -> bool:
    """Whether retrying the same write may succeed; otherwise something in it is refused."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state[:2] in _TRANSIENT_CLASSES or state == "55P03"
    # No SQLSTATE: raised by the client (a lost connection, a pool timeout) unless it is a
    # value it cannot send (a NUL in text).
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _no_nul(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL: the record is kept, its NULs shown as U+FFFD.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _no_nuls(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_no_nul(v) for v in row)


def record_values(row: bytes) -> list[Any]:
    return [_no_nul(v) for v in msgspec.json.decode(row)]


async def _claim(db: AsyncConnection[Any], group: CommitGroup, at: float) -> bool:
    """Record the group's key; False if a previous attempt already committed it."""
    group.key = group.key or uuid.uuid4().hex
    cur = await db.execute(
        "INSERT INTO commit_groups VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (group.key, at),
    )
    return await cur.fetchone() is not None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch, as SQLite's json_patch applies it to a record's flags."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def _score_rows(
    db: AsyncConnection[Any], scores: list[tuple[str, str, float, str]]
) -> list[dict[str, Any]]:
    """The scores' UPDATE parameters, each record's flags merged into its stored ones (the
    records locked until the commit)."""
    keys = sorted({(app, rid) for app, rid, _, _ in scores})
    cur = await db.execute(
        "SELECT app, id, flags FROM records JOIN unnest(%s::text[], %s::text[]) AS k(app, id)"
        " USING (app, id) FOR UPDATE OF records",
        ([k[0] for k in keys], [k[1] for k in keys]),
    )
    flags = {(app, rid): msgspec.json.decode(f or "{}") for app, rid, f in await cur.fetchall()}
    rows = []
    for app, rid, score, patch in scores:
        merged = merge_patch(flags.get((app, rid), {}), msgspec.json.decode(patch))
        flags[(app, rid)] = merged
        rows.append({"app": app, "id": rid, "score": score, "flags": _encode(merged).decode()})
    return rows


async def write_group(
    db: AsyncConnection[Any], group: CommitGroup, node: str, at: float, totals: list[WriterRow]
) -> None:
    """Everything in `group`, in one transaction (`db` in autocommit mode); `totals`: this
    process's partials once the group is added (pg_partials.py). A group of sampled rows,
    partials and ids (what ingest makes) is one statement and one round trip: a group's fixed
    cost is what a node pays at a modest rate (bench/pg_commit.py)."""
    first, rest = _first_chunk(group.records)
    group.key = group.key or uuid.uuid4().hex
    params = {
        "key": group.key,
        "at": at,
        "records": (b"[" + b",".join(first) + b"]").decode(),
        "node": node,
        "partials": rows_json(totals),
        "n": len(group.ids),
        "ids": _encode(group.ids) if group.ids else b"",
    }
    try:
        if rest or group.rejected or group.rollups or group.scores or group.feedback:
            async with db.transaction():
                await db.execute(_WRITE_GROUP, params)
                await _write_rest(db, group, rest)
        else:
            await db.execute(_WRITE_GROUP, params)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != _CLAIM_CONSTRAINT:
            raise
        # A previous attempt committed this group; its acks are due, nothing is written twice.


def _first_chunk(records: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Up to `_ROWS_PER_STATEMENT` rows that the server can take as JSON, and the rest."""
    if any(b"\\u0000" in row for row in records):
        clean = [row for row in records if b"\\u0000" not in row]
        dirty = [row for row in records if b"\\u0000" in row]
        return clean[:_ROWS_PER_STATEMENT], clean[_ROWS_PER_STATEMENT:] + dirty
    return records[:_ROWS_PER_STATEMENT], records[_ROWS_PER_STATEMENT:]


async def _write_rest(db: AsyncConnection[Any], group: CommitGroup, records: list[bytes]) -> None:
    async with db.cursor() as cur:
        if nul_rows := [row for row in records if b"\\u0000" in row]:
            # PostgreSQL's JSON refuses \u0000: these rows' values are bound instead.
            records = [row for row in records if b"\\u0000" not in row]
            await cur.executemany(_INSERT_RECORD_VALUES, [record_values(r) for r in nul_rows])
        for i in range(0, len(records), _ROWS_PER_STATEMENT):
            blob = b"[" + b",".join(records[i : i + _ROWS_PER_STATEMENT]) + b"]"
            await cur.execute(_INSERT_RECORDS, (blob.decode(),))
        if group.rejected:
            await cur.executemany(_INSERT_REJECTED, [_no_nuls(r) for r in group.rejected])
        if group.rollups:
            await cur.executemany(_UPSERT_ROLLUP, group.rollups)
        if group.scores:
            await cur.executemany(_UPDATE_SCORE, await _score_rows(db, group.scores))
        if group.feedback:
            await cur.executemany(_INSERT_FEEDBACK, [_no_nuls(r) for r in group.feedback])


async def write_group_row_by_row(  # noqa: PLR0917
    db: AsyncConnection[Any],
    group: CommitGroup,
    node: str,
    at: float,
    totals: list[WriterRow],
    sample_bytes: int,
) -> int:
    """`group` in one transaction, each sampled row, rejected sample, rollup, score and feedback
    event in a savepoint of its own: what PostgreSQL refuses is left out and kept as a rejected
    sample ('store_refused'), and the rest commits. Returns how many were left out."""
    refused: list[tuple[bytes, str]] = []
    async with db.transaction():
        if not await _claim(db, group, at):
            return 0
        rows: list[tuple[str, Any, bytes]] = []
        rows += [(_INSERT_RECORD_VALUES, r, r) for r in group.records]
        rows += [(_INSERT_REJECTED, r, repr(r).encode()) for r in group.rejected]
        rows += [(_UPSERT_ROLLUP, r, repr(r).encode()) for r in group.rollups]
        rows += [(_UPDATE_SCORE, r, repr(r).encode()) for r in group.scores]
        rows += [(_INSERT_FEEDBACK, r, repr(r).encode()) for r in group.feedback]
        for sql, values, raw in rows:
            try:
                async with db.transaction():
                    await _write_one(db, sql, values)
            except psycopg.Error as exc:
                if transient(exc):
                    raise
                refused.append((raw, str(exc)))
        async with db.cursor() as cur:
            await cur.executemany(
                _INSERT_REJECTED,
                [
                    (at, "store", "store_refused", _no_nul(error[:200]), raw[:sample_bytes])
                    for raw, error in refused
                ],
            )
        await db.execute(UPSERT_PARTIALS, {"node": node, "partials": rows_json(totals)})
        if group.ids:
            await db.execute(
                "INSERT INTO seen_ids (n, ids) VALUES (%s, %s)",
                (len(group.ids), _encode(group.ids)),
            )
    return len(refused)


async def _write_one(db: AsyncConnection[Any], sql: str, values: Any) -> None:
    if sql is _INSERT_RECORD_VALUES:
        values = record_values(values)
    elif sql is _UPDATE_SCORE:
        values = (await _score_rows(db, [values]))[0]
    elif sql is _INSERT_REJECTED or sql is _INSERT_FEEDBACK:
        values = _no_nuls(values)
    await db.execute(sql, values)


async def recent_ids(db: AsyncConnection[Any], limit: int) -> list[tuple[str, str]]:
    """The newest `limit` (app, id) pairs, oldest first."""
    chunks: list[bytes] = []
    total = 0
    cur = await db.execute("SELECT n, ids FROM seen_ids ORDER BY seq DESC")
    for n, blob in await cur.fetchall():  # few rows: a group's ids each, pruned to `keep_ids`
        if total >= limit:
            break
        chunks.append(blob)
        total += n
    pairs = [tuple(pair) for blob in reversed(chunks) for pair in msgspec.json.decode(blob)]
    return [(str(app), str(rid)) for app, rid in pairs[-limit:]] if limit else []


PRUNE_IDS = (
    "DELETE FROM seen_ids WHERE seq < (SELECT seq FROM (SELECT seq, SUM(n) OVER"
    " (ORDER BY seq DESC) AS newer FROM seen_ids) t WHERE newer >= %s ORDER BY seq DESC LIMIT 1)"
)
