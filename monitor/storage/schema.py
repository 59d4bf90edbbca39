"""The main store's tables, as versioned forward migrations per backend.

Each database records the migrations applied to it in `schema_migrations` (one row per
version). Opening a store applies the missing ones in order, in one transaction with the
version rows, so a crash half-way leaves the database as it was; a database whose version is
newer than this code's is refused, as an older release must not write a layout it does not
know. A migration is never edited once released: a change is a new migration at the end.

Every table is defined here once. On SQLite one sequence covers the whole file: the store's
tables (1, 2) and the node's own state beside them, the outbox, alert states, silences, Slack
threads, references, window checkpoints and the judge's tables (3); every module that opens
the file applies what is missing, so whichever opens it first brings it up to date. With the
store on PostgreSQL, `store.local_url`'s file goes through the same sequence (its store
tables stay empty). On PostgreSQL the alerting tables are migration 4, the judge's 5, the
detectors' references, window checkpoints and shared drift samples 6, partials per writer 7.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lookout.errors import StoreError
from lookout.monitor.storage.local_schema import SQLITE_LOCAL, adopt_first_outbox

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from psycopg import AsyncConnection


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    # SQLite only: brings tables that an unversioned release left to what `statements` expect.
    adopt: Callable[[sqlite3.Connection], None] | None = None


_SQLITE_V1 = (
    """CREATE TABLE IF NOT EXISTS records (
    id TEXT NOT NULL, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT,
    PRIMARY KEY (app, id))""",
    "CREATE INDEX IF NOT EXISTS records_id ON records (id)",
    "CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts)",
    "CREATE INDEX IF NOT EXISTS records_received ON records (received_at)",
    """CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS partials (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    errors INTEGER NOT NULL, output_tokens INTEGER NOT NULL, tokens INTEGER NOT NULL,
    token_records INTEGER NOT NULL, cost REAL NOT NULL, latency_s BLOB, ttft_s BLOB,
    gen_tps BLOB, PRIMARY KEY (minute, app, model)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS seen_ids (n INTEGER NOT NULL, ids BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL)""",
)

# Users' feedback events (storage/feedback.py), keyed by their identity. `IF NOT EXISTS`: the
# judge's store creates it too in a file no store has opened yet (judge/store.py).
SQLITE_FEEDBACK = (
    """CREATE TABLE IF NOT EXISTS feedback (
    app TEXT NOT NULL, record_id TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT NOT NULL,
    score REAL NOT NULL, value TEXT, comment TEXT, ts REAL NOT NULL, received_at REAL NOT NULL,
    negative INTEGER NOT NULL, PRIMARY KEY (app, record_id, key, user_id))""",
    "CREATE INDEX IF NOT EXISTS feedback_received ON feedback (received_at)",
)


def _adopt_unversioned(db: sqlite3.Connection) -> None:
    """A database made before versioning keyed records by id alone (ids are unique per app
    only): rebuild that table keyed by (app, id), rows kept, before migration 1 runs."""
    pk = {row[1]: row[5] for row in db.execute("PRAGMA table_info(records)")}
    if not pk or pk.get("app"):
        return  # no records table yet, or already keyed by (app, id)
    db.execute("ALTER TABLE records RENAME TO records_unversioned")
    for index in ("records_id", "records_app_ts", "records_received"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    db.execute(_SQLITE_V1[0])
    db.execute("INSERT OR IGNORE INTO records SELECT * FROM records_unversioned")
    db.execute("DROP TABLE records_unversioned")


# `IF NOT EXISTS` throughout: a database made before versioning (which has no
# schema_migrations table) already holds some of these tables; see `_adopt_unversioned`.
SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "records, rollups, partials, seen ids, rejected samples",
        _SQLITE_V1,
        adopt=_adopt_unversioned,
    ),
    Migration(2, "feedback events", SQLITE_FEEDBACK),
    Migration(
        3,
        "outbox, alert states, silences, threads, references, judge tables",
        SQLITE_LOCAL,
        adopt=adopt_first_outbox,
    ),
)

# Partials carry a `node` (`node.id`): each node of a cluster adds to its own rows, so a
# commit never waits on another node's lock, and readers merge the nodes' rows of a minute.
_POSTGRES_V1 = (
    """CREATE TABLE records (
    id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL,
    app TEXT NOT NULL, model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL,
    latency_ms DOUBLE PRECISION, ttft_ms DOUBLE PRECISION, input_tokens BIGINT,
    output_tokens BIGINT, cost DOUBLE PRECISION, prompt TEXT, response TEXT, error TEXT,
    user_id TEXT, session_id TEXT, metadata TEXT, ood_score DOUBLE PRECISION, flags TEXT,
    PRIMARY KEY (app, id))""",
    "CREATE INDEX records_id ON records (id)",
    "CREATE INDEX records_app_ts ON records (app, ts)",
    "CREATE INDEX records_received ON records (received_at)",
    """CREATE TABLE rollups (
    minute BIGINT NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL, PRIMARY KEY (minute, app, model, series))""",
    """CREATE TABLE partials (
    minute BIGINT NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT '', count BIGINT NOT NULL, errors BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, tokens BIGINT NOT NULL, token_records BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL, latency_s BYTEA, ttft_s BYTEA, gen_tps BYTEA,
    PRIMARY KEY (minute, app, model, node))""",
    """CREATE TABLE seen_ids (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n INTEGER NOT NULL,
    ids BYTEA NOT NULL)""",
    """CREATE TABLE rejected (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, sample BYTEA NOT NULL)""",
    # The keys of recently committed groups: a retry after a connection lost during COMMIT
    # finds its key and writes nothing twice.
    "CREATE TABLE commit_groups (key TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
)

_POSTGRES_FEEDBACK = (
    """CREATE TABLE feedback (
    app TEXT NOT NULL, record_id TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL, value TEXT, comment TEXT, ts DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, negative BOOLEAN NOT NULL,
    PRIMARY KEY (app, record_id, key, user_id))""",
    "CREATE INDEX feedback_received ON feedback (received_at)",
)

# The cluster's members: each node's heartbeat (monitor/cluster/membership.py).
_POSTGRES_NODES = (
    """CREATE TABLE nodes (
    node TEXT PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL, version TEXT NOT NULL,
    records_last_minute BIGINT NOT NULL DEFAULT 0)""",
)

# Alerting shared by a cluster (monitor/storage/pg_outbox.py): the notification log, whose
# (channel, idempotency_key) refuses a second leader's duplicate; a row is claimed by one node
# at a time (claimed_by, lease_until); the alert states, silences and Slack threads.
_POSTGRES_ALERTING = (
    """CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, payload TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    next_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', last_error TEXT, done_at DOUBLE PRECISION,
    ordering_key TEXT NOT NULL DEFAULT '', claimed_by TEXT, lease_until DOUBLE PRECISION,
    UNIQUE (channel, idempotency_key))""",
    "CREATE INDEX outbox_due ON outbox (channel, next_at) WHERE status = 'pending'",
    "CREATE INDEX outbox_line ON outbox (channel, ordering_key, id) WHERE status = 'pending'",
    "CREATE INDEX outbox_done ON outbox (done_at) WHERE status <> 'pending'",
    """CREATE TABLE alert_states (
    fingerprint TEXT PRIMARY KEY, rule TEXT NOT NULL, state TEXT NOT NULL)""",
    """CREATE TABLE silences (
    id TEXT PRIMARY KEY, rule TEXT, matchers TEXT NOT NULL, starts_at DOUBLE PRECISION NOT NULL,
    ends_at DOUBLE PRECISION NOT NULL, comment TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE message_threads (
    channel TEXT NOT NULL, alert_key TEXT NOT NULL, message_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (channel, alert_key))""",
)

# The judge's state, shared by the cluster's nodes (monitor/storage/pg_judge.py). A run the
# schedule started has `run_key` "schedule:<tick>": the unique key lets one node per tick in.
# `node` is who ran it, so a node's restart ends its own unfinished runs, not another's.
_POSTGRES_JUDGE = (
    """CREATE TABLE judge_verdicts (
    record_id TEXT NOT NULL, criterion TEXT NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL,
    run_id BIGINT NOT NULL, judged_at DOUBLE PRECISION NOT NULL, passed BOOLEAN NOT NULL,
    score DOUBLE PRECISION NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL,
    PRIMARY KEY (record_id, criterion))""",
    "CREATE INDEX judge_verdicts_at ON judge_verdicts (judged_at)",
    "CREATE INDEX judge_verdicts_run ON judge_verdicts (run_id)",
    """CREATE TABLE judge_runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_key TEXT UNIQUE,
    node TEXT NOT NULL DEFAULT '', started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION, trigger TEXT NOT NULL, app TEXT,
    outcome TEXT NOT NULL DEFAULT 'running', detail TEXT NOT NULL DEFAULT '',
    judged BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0, input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0, cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    agreement DOUBLE PRECISION, anchors BIGINT NOT NULL DEFAULT 0)""",
    "CREATE INDEX judge_runs_started ON judge_runs (started_at)",
    """CREATE TABLE judge_requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, requested_at DOUBLE PRECISION NOT NULL,
    app TEXT, taken_at DOUBLE PRECISION, taken_by TEXT, run_id BIGINT)""",
    """CREATE TABLE judge_reference_scores (
    record_id TEXT PRIMARY KEY, app TEXT NOT NULL, model TEXT NOT NULL,
    scored_at DOUBLE PRECISION NOT NULL, string_similarity DOUBLE PRECISION NOT NULL,
    embedding_similarity DOUBLE PRECISION, embedder TEXT NOT NULL)""",
    "CREATE INDEX judge_reference_scores_at ON judge_reference_scores (scored_at)",
    """CREATE TABLE judge_pairs (
    shadow_id TEXT PRIMARY KEY, production_id TEXT NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, shadow_model TEXT NOT NULL, run_id BIGINT NOT NULL,
    judged_at DOUBLE PRECISION NOT NULL, outcome TEXT NOT NULL, production_first TEXT NOT NULL,
    shadow_first TEXT NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL)""",
    "CREATE INDEX judge_pairs_at ON judge_pairs (judged_at)",
    "CREATE INDEX judge_pairs_production ON judge_pairs (production_id)",
)

# The detectors' references, their windows' checkpoints and the embeddings each node shares
# for cluster-wide drift (pg_references.py, docs/scale-out.md "Drift and OOD across nodes").
_POSTGRES_DETECTORS = (
    """CREATE TABLE detector_refs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, app TEXT NOT NULL, field TEXT NOT NULL,
    version INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, source TEXT NOT NULL,
    embedder TEXT NOT NULL, size INTEGER NOT NULL, active BOOLEAN NOT NULL DEFAULT false,
    drift_threshold DOUBLE PRECISION, ood_threshold DOUBLE PRECISION, states BYTEA NOT NULL,
    texts TEXT NOT NULL, UNIQUE (app, field, version))""",
    "CREATE UNIQUE INDEX detector_refs_active ON detector_refs (app, field) WHERE active",
    """CREATE TABLE detector_windows (
    app TEXT NOT NULL, field TEXT NOT NULL, ref_id BIGINT NOT NULL,
    saved_at DOUBLE PRECISION NOT NULL, embeddings BYTEA NOT NULL, texts TEXT NOT NULL,
    PRIMARY KEY (app, field))""",
    """CREATE TABLE drift_samples (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, node TEXT NOT NULL, app TEXT NOT NULL,
    field TEXT NOT NULL, ref_id BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
    n INTEGER NOT NULL, flagged INTEGER NOT NULL, dim INTEGER NOT NULL,
    embeddings BYTEA NOT NULL)""",
    "CREATE INDEX drift_samples_node ON drift_samples (node, id)",
)

# Each process writes its own partial rows, as running totals (monitor/storage/pg_partials.py);
# the rows written before keep the empty writer.
_POSTGRES_PARTIAL_WRITERS = (
    "ALTER TABLE partials ADD COLUMN writer TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE partials DROP CONSTRAINT partials_pkey",
    "ALTER TABLE partials ADD PRIMARY KEY (minute, app, model, node, writer)",
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records, rollups, partials per node, seen ids, rejected samples", _POSTGRES_V1),
    Migration(2, "feedback events", _POSTGRES_FEEDBACK),
    Migration(3, "nodes and their heartbeats", _POSTGRES_NODES),
    Migration(4, "outbox, alert states, silences, message threads", _POSTGRES_ALERTING),
    Migration(5, "judge runs, verdicts, requests, reference scores, pairs", _POSTGRES_JUDGE),
    Migration(
        6, "detector references, window checkpoints, shared drift samples", _POSTGRES_DETECTORS
    ),
    Migration(7, "partials per writing process", _POSTGRES_PARTIAL_WRITERS),
)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)

_CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"


def pending(current: int, migrations: Sequence[Migration], where: str) -> list[Migration]:
    """The migrations a database at version `current` lacks; StoreError if it is newer."""
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StoreError(
            f"{where} has schema version {current}, newer than this release's {latest}: "
            "run the release that wrote it (or newer)"
        )
    return [m for m in migrations if m.version > current]


def migrate_sqlite(
    db: sqlite3.Connection, migrations: Sequence[Migration] = SQLITE_MIGRATIONS
) -> int:
    """Bring `db` (autocommit mode) to the newest version in one IMMEDIATE transaction, so
    two processes opening it at once do not both migrate. Returns the version."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_VERSION_TABLE)
        (current,) = db.execute(_CURRENT_VERSION).fetchone()
        todo = pending(current, migrations, "the SQLite store")
        for m in todo:
            if m.adopt is not None:
                m.adopt(db)
            for statement in m.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (m.version, m.name, time.time())
            )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return todo[-1].version if todo else int(current)


# Any constant taken by every lookout process that migrates: one migrates, the others wait.
_MIGRATION_LOCK = 0x6C6F6F6B6F7574


async def migrate_postgres(
    conn: AsyncConnection[Any], migrations: Sequence[Migration] = POSTGRES_MIGRATIONS
) -> int:
    """Bring the database to the newest version in one transaction, under an advisory lock
    so that nodes starting together migrate once. Returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(_VERSION_TABLE)
        cur = await conn.execute(_CURRENT_VERSION)
        row = await cur.fetchone()
        current = int(row[0]) if isinstance(row, tuple) else 0
        todo = pending(current, migrations, "the PostgreSQL store")
        for m in todo:
            for statement in m.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                (m.version, m.name, time.time()),
            )
    return todo[-1].version if todo else current
