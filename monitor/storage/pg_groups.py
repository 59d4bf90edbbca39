"""Commit groups on PostgreSQL: what one transaction writes, and how (psycopg 3, async).

Sampled rows go in as one JSON array per chunk that the server unpacks (one statement per
1,000 rows, no per-row work in Python); per-minute partials are created if missing, read
`FOR UPDATE`, merged (t-digests) and written back as the committing node's own rows. Each
group carries a key written in the same transaction: a retry after a connection lost during
COMMIT, when the commit may have happened, finds the key and writes nothing twice.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.feedback import COLUMNS as FEEDBACK_COLUMNS
from lookout.monitor.storage.groups import merge_digests

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from lookout.monitor.storage.groups import CommitGroup

_COLUMNS = (
    "id, ts, received_at, app, model, provider, status, latency_ms, ttft_ms, input_tokens, "
    "output_tokens, cost, prompt, response, error, user_id, session_id, metadata"
)
_CASTS: tuple[str, ...] = ("", "::float8", "::float8", "", "", "", "", "::float8", "::float8")
_CASTS += ("::bigint", "::bigint", "::float8", "", "", "", "", "", "")
_INSERT_RECORDS = (
    f"INSERT INTO records ({_COLUMNS}) SELECT "
    + ", ".join(f"(v->>{i}){cast}" for i, cast in enumerate(_CASTS))
    + " FROM jsonb_array_elements(%s::jsonb) AS r(v) ON CONFLICT (app, id) DO NOTHING"
)
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
_PARTIAL_COLUMNS = (
    "minute, app, model, count, errors, output_tokens, tokens, token_records, cost, latency_s,"
    " ttft_s, gen_tps"
)
# A partial row is created empty first, so that the read below can lock it even when it is
# new: a second writer of the same node then waits for the first's commit and merges into its
# t-digests instead of overwriting them.
_CREATE_PARTIALS = (
    "INSERT INTO partials (node, minute, app, model, count, errors, output_tokens, tokens,"
    " token_records, cost) SELECT %s, k.minute, k.app, k.model, 0, 0, 0, 0, 0, 0"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS k(minute, app, model)"
    " ON CONFLICT DO NOTHING"
)
_LOCK_PARTIALS = (
    "SELECT minute, app, model, latency_s, ttft_s, gen_tps FROM partials"
    " JOIN unnest(%s::bigint[], %s::text[], %s::text[]) AS k(minute, app, model)"
    " USING (minute, app, model) WHERE node = %s ORDER BY minute, app, model"
    " FOR UPDATE OF partials"
)
_ADD_PARTIAL = (
    "UPDATE partials SET count = count + %s, errors = errors + %s,"
    " output_tokens = output_tokens + %s, tokens = tokens + %s,"
    " token_records = token_records + %s, cost = cost + %s, latency_s = %s, ttft_s = %s,"
    " gen_tps = %s WHERE minute = %s AND app = %s AND model = %s AND node = %s"
)
_encode = msgspec.json.Encoder().encode

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


def _merged(partials: list[PartialRow]) -> dict[tuple[int, str, str], PartialRow]:
    """The group's partials, one per (minute, app, model)."""
    by_key: dict[tuple[int, str, str], PartialRow] = {}
    for p in partials:
        key = (p.minute, p.app, p.model)
        q = by_key.get(key)
        by_key[key] = p if q is None else add_partials(q, p)
    return by_key


def merged_by_minute(rows: list[tuple[Any, ...]]) -> list[PartialRow]:
    """Partial rows ordered by (minute, app, model), each key's nodes merged into one."""
    merged: list[PartialRow] = []
    for row in rows:
        p = PartialRow(*row)
        last = merged[-1] if merged else None
        if last is not None and (last.minute, last.app, last.model) == row[:3]:
            merged[-1] = add_partials(last, p)
        else:
            merged.append(p)
    return merged


def add_partials(a: PartialRow, b: PartialRow) -> PartialRow:
    """Two partials of one (minute, app, model) as one: sums, and merged t-digests."""
    return PartialRow(
        a.minute,
        a.app,
        a.model,
        a.count + b.count,
        a.errors + b.errors,
        a.output_tokens + b.output_tokens,
        a.tokens + b.tokens,
        a.token_records + b.token_records,
        a.cost + b.cost,
        merge_digests(a.latency_s, b.latency_s),
        merge_digests(a.ttft_s, b.ttft_s),
        merge_digests(a.gen_tps, b.gen_tps),
    )


async def _add_partials(db: AsyncConnection[Any], partials: list[PartialRow], node: str) -> None:
    if not partials:
        return
    by_key = _merged(partials)
    minutes, apps, models = (list(c) for c in zip(*by_key, strict=True))
    await db.execute(_CREATE_PARTIALS, (node, minutes, apps, models))
    cur = await db.execute(_LOCK_PARTIALS, (minutes, apps, models, node))
    stored = {(m, a, mo): rest for m, a, mo, *rest in await cur.fetchall()}
    rows = []
    for key, p in by_key.items():
        sums = (p.count, p.errors, p.output_tokens, p.tokens, p.token_records, p.cost)
        digests = zip(stored[key], (p.latency_s, p.ttft_s, p.gen_tps), strict=True)
        rows.append((*sums, *(merge_digests(a, b) for a, b in digests), *key, node))
    async with db.cursor() as c:
        await c.executemany(_ADD_PARTIAL, rows)


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


async def _add_ids(db: AsyncConnection[Any], ids: list[tuple[str, str]]) -> None:
    if ids:
        await db.execute("INSERT INTO seen_ids (n, ids) VALUES (%s, %s)", (len(ids), _encode(ids)))


async def write_group(db: AsyncConnection[Any], group: CommitGroup, node: str, at: float) -> None:
    """Everything in `group`, in one transaction (`db` in autocommit mode)."""
    async with db.transaction():
        if not await _claim(db, group, at):
            return
        records = group.records
        async with db.cursor() as cur:
            if nul_rows := [row for row in records if b"\\u0000" in row]:
                # PostgreSQL's JSON refuses \u0000: these rows' values are bound instead.
                records = [row for row in records if b"\\u0000" not in row]
                await cur.executemany(_INSERT_RECORD_VALUES, [record_values(r) for r in nul_rows])
            for i in range(0, len(records), _ROWS_PER_STATEMENT):
                blob = b"[" + b",".join(records[i : i + _ROWS_PER_STATEMENT]) + b"]"
                await cur.execute(_INSERT_RECORDS, (blob.decode(),))
            if group.rejected:
                rejected = [_no_nuls(r) for r in group.rejected]
                await cur.executemany(_INSERT_REJECTED, rejected)
            if group.rollups:
                await cur.executemany(_UPSERT_ROLLUP, group.rollups)
            if group.scores:
                await cur.executemany(_UPDATE_SCORE, await _score_rows(db, group.scores))
            if group.feedback:
                await cur.executemany(_INSERT_FEEDBACK, [_no_nuls(r) for r in group.feedback])
        await _add_partials(db, group.partials, node)
        await _add_ids(db, group.ids)


async def write_group_row_by_row(
    db: AsyncConnection[Any], group: CommitGroup, node: str, at: float, sample_bytes: int
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
        await _add_partials(db, group.partials, node)
        await _add_ids(db, group.ids)
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
